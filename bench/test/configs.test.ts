import {test} from 'node:test'
import assert from 'node:assert/strict'
import {parse} from 'yaml'
import {divertConfig, haproxyConfig, nginxOriginConfig, nginxProxyConfig, ruleSources} from '../configs.js'

const ports = {http: 10001, bulk: 10002, udp: 10003}
const backends = {origin: 20001, iperf: 20002, echo: 20003, sink: 20004}
const limits = {nofile: 20000}

test('HAProxy: one thread, maxconn within the fd limit, both TCP frontends to their backends', () => {
  const cfg = haproxyConfig(ports, backends, limits)
  assert.match(cfg, /nbthread 1/)
  assert.match(cfg, /maxconn 9950/)
  assert.match(cfg, /bind 127\.0\.0\.1:10001[\s\S]*server origin 127\.0\.0\.1:20001/)
  assert.match(cfg, /bind 127\.0\.0\.1:10002[\s\S]*server iperf 127\.0\.0\.1:20002/)
  assert.doesNotMatch(cfg, /10003/, 'HAProxy has no UDP listener')
})

test('nginx proxy: stream TCP and UDP servers, its own pid and log, load_module only when dynamic', () => {
  const dynamic = nginxProxyConfig(ports, backends, '/t/n', limits, '/usr/lib/nginx/modules/ngx_stream_module.so')
  assert.match(dynamic, /^load_module \/usr\/lib\/nginx\/modules\/ngx_stream_module\.so;/)
  assert.match(dynamic, /pid \/t\/n\/nginx\.pid;/)
  assert.match(dynamic, /error_log \/t\/n\/error\.log/)
  assert.match(dynamic, /worker_processes 1;/)
  assert.match(dynamic, /listen 127\.0\.0\.1:10003 udp rcvbuf=4194304; proxy_pass 127\.0\.0\.1:20003;/)
  assert.match(dynamic, /listen 127\.0\.0\.1:10001 backlog=4096; proxy_pass 127\.0\.0\.1:20001;/)
  assert.doesNotMatch(nginxProxyConfig(ports, backends, '/t/n', limits), /load_module/)
})

test('nginx origin serves the www dir with long keep-alive and header timeouts', () => {
  const cfg = nginxOriginConfig(20001, '/t/o', '/t/o/www', limits)
  assert.match(cfg, /listen 127\.0\.0\.1:20001 backlog=4096;/)
  assert.match(cfg, /root \/t\/o\/www;/)
  assert.match(cfg, /client_header_timeout 10m;/)
  assert.match(cfg, /access_log off;/)
})

test('divert config is YAML with the three listeners, four backends and the requested rules', () => {
  const doc = parse(divertConfig(ports, backends, '/t/d', limits, {rules: 10, mirror: true, record: '/t/d/x.pcap'}))
  assert.deepEqual(doc.listeners.map((l: {name: string; bind: string}) => `${l.name} ${l.bind}`), ['http 127.0.0.1:10001', 'bulk 127.0.0.1:10002', 'dns 127.0.0.1:10003'])
  assert.deepEqual(doc.listeners[2].udp, {idle_timeout: '60s', max_flows: 19500})
  assert.equal(doc.backends.udpecho.servers[0].address, '127.0.0.1:20003')
  assert.equal(doc.backends.mirror.servers[0].address, '127.0.0.1:20004')
  assert.equal(doc.rules.length, 12)
  assert.deepEqual(doc.rules.slice(-2), [{source: '127.0.0.1', mirror: 'mirror', listener: 'http'}, {source: '127.0.0.1', record: '/t/d/x.pcap', listener: 'http'}])
  assert.equal(doc.state, '/t/d/divert-state.json')
})

test('rule sources: unique, never a bench client, inside 198.18.0.0/15 after 127.0.0.9', () => {
  const s = ruleSources(100_000)
  assert.equal(s.length, 100_000)
  assert.equal(new Set(s).size, 100_000)
  assert.equal(s[0], '127.0.0.9')
  assert.equal(s[1], '198.18.0.0')
  assert.equal(s[99_999], '198.19.134.158')
  assert.ok(s.slice(1).every((a) => /^198\.1[89]\.\d+\.\d+$/.test(a)))
  assert.throws(() => ruleSources(0), RangeError)
  assert.throws(() => ruleSources(131_074), /198\.18\.0\.0\/15 holds 131,072/)
})
