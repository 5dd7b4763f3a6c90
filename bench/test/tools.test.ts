import {test} from 'node:test'
import assert from 'node:assert/strict'
import {aptCommand, checkTools, missingMessage, missingPackages, streamModule, type Probe} from '../tools.js'

function probe(present: string[], nginxV: string, files: string[] = []): Probe {
  return {
    which: (cmd) => (present.includes(cmd) ? `/usr/bin/${cmd}` : undefined),
    output: (cmd, args) => (cmd === 'nginx' && args[0] === '-V' ? nginxV : `${cmd} version 1.0\nmore`),
    exists: (p) => files.includes(p),
  }
}

const ALL = ['haproxy', 'nginx', 'iperf3', 'wrk', 'gcc', 'taskset', 'prlimit']
const DEBIAN_V = 'nginx version: nginx/1.22.1\nconfigure arguments: --modules-path=/usr/lib/nginx/modules --with-stream=dynamic --with-stream_ssl_module'

test('all present with Debian dynamic stream module: nothing missing, load_module path found', () => {
  const r = checkTools(probe(ALL, DEBIAN_V, ['/usr/lib/nginx/modules/ngx_stream_module.so']))
  assert.deepEqual(missingPackages(r), [])
  assert.equal(r.streamModule, '/usr/lib/nginx/modules/ngx_stream_module.so')
  assert.equal(r.tools.find((t) => t.name === 'wrk')?.detail, 'wrk version 1.0')
})

test('missing wrk and stream module: apt packages listed once each, with the install command', () => {
  const r = checkTools(probe(ALL.filter((t) => t !== 'wrk'), DEBIAN_V))
  assert.deepEqual(missingPackages(r), ['wrk', 'libnginx-mod-stream'])
  const msg = missingMessage(r, false)
  assert.match(msg, /wrk: not found on PATH \(Debian\/Ubuntu package wrk\)/)
  assert.match(msg, /sudo apt-get update && sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk libnginx-mod-stream/)
  assert.match(msg, /--install/)
})

test('aptCommand drops sudo for root', () => {
  assert.equal(aptCommand(['iperf3'], true), 'apt-get update && env DEBIAN_FRONTEND=noninteractive apt-get install -y iperf3')
})

test('stream module: built in, dynamic elsewhere, or absent', () => {
  assert.deepEqual(streamModule(probe(ALL, 'configure arguments: --with-stream --with-http_ssl_module')), {ok: true, detail: 'built into nginx'})
  assert.equal(streamModule(probe(ALL, '--modules-path=/opt/m --with-stream=dynamic', ['/opt/m/ngx_stream_module.so'])).path, '/opt/m/ngx_stream_module.so')
  assert.equal(streamModule(probe(ALL, '--with-http_ssl_module')).ok, false)
  assert.equal(missingPackages(checkTools(probe(ALL.filter((t) => t !== 'nginx'), ''))).join(' '), 'nginx libnginx-mod-stream')
})
