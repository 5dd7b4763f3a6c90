/**
 * The tools the bench needs, checked before anything runs: HAProxy, nginx with its stream module,
 * iperf3, wrk, gcc (for bench/loadgen.c), taskset and prlimit. The bench never installs silently:
 * without --install it prints the apt-get command for what is missing and stops.
 *
 *   Probe (PATH, `nginx -V`, files) → checkTools → ToolStatus[] → missing? aptCommand : versions
 */
import {accessSync, constants, existsSync} from 'node:fs'
import {spawnSync} from 'node:child_process'
import {delimiter, join} from 'node:path'

export interface Probe {
  which(cmd: string): string | undefined
  /** stdout + stderr of a command ('' when it cannot run). */
  output(cmd: string, args: string[]): string
  exists(path: string): boolean
}

export interface ToolStatus {
  name: string
  aptPackage: string
  ok: boolean
  /** Version line, or why it is missing. */
  detail: string
}

export interface ToolReport {
  tools: ToolStatus[]
  /** `load_module` path for nginx's stream module, when it is a dynamic module. */
  streamModule?: string
}

export const systemProbe: Probe = {
  which(cmd) {
    for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter)) {
      try {
        accessSync(join(dir, cmd), constants.X_OK)
        return join(dir, cmd)
      } catch {
        // not in this directory
      }
    }
    return undefined
  },
  output(cmd, args) {
    const r = spawnSync(cmd, args, {encoding: 'utf8', timeout: 10_000})
    return `${r.stdout ?? ''}${r.stderr ?? ''}`
  },
  exists: (path) => existsSync(path),
}

const SIMPLE: Array<{name: string; aptPackage: string; version: string[]}> = [
  {name: 'haproxy', aptPackage: 'haproxy', version: ['-v']},
  {name: 'nginx', aptPackage: 'nginx', version: ['-v']},
  {name: 'iperf3', aptPackage: 'iperf3', version: ['--version']},
  {name: 'wrk', aptPackage: 'wrk', version: ['-v']},
  {name: 'gcc', aptPackage: 'gcc', version: ['--version']},
  {name: 'taskset', aptPackage: 'util-linux', version: ['--version']},
  {name: 'prlimit', aptPackage: 'util-linux', version: ['--version']},
]

function firstLine(text: string): string {
  return text.split('\n').map((l) => l.trim()).find(Boolean) ?? ''
}

/**
 * nginx's stream module: built in (`--with-stream`), or a dynamic module (`--with-stream=dynamic`,
 * Debian's libnginx-mod-stream) loaded from --modules-path (nginx docs, "load_module").
 */
export function streamModule(probe: Probe): {ok: boolean; path?: string; detail: string} {
  const v = probe.output('nginx', ['-V'])
  if (/--with-stream(\s|$)/.test(v)) return {ok: true, detail: 'built into nginx'}
  const dir = /--modules-path=(\S+)/.exec(v)?.[1] ?? '/usr/lib/nginx/modules'
  const path = join(dir, 'ngx_stream_module.so')
  if (probe.exists(path)) return {ok: true, path, detail: path}
  return {ok: false, detail: `no ${path} (nginx was built with ${/--with-stream=dynamic/.test(v) ? 'a dynamic stream module that is not installed' : 'no stream module'})`}
}

export function checkTools(probe: Probe): ToolReport {
  const tools: ToolStatus[] = SIMPLE.map(({name, aptPackage, version}) => {
    if (!probe.which(name)) return {name, aptPackage, ok: false, detail: 'not found on PATH'}
    return {name, aptPackage, ok: true, detail: firstLine(probe.output(name, version))}
  })
  const nginxOk = tools.find((t) => t.name === 'nginx')?.ok ?? false
  const sm = nginxOk ? streamModule(probe) : {ok: false, detail: 'needs nginx'}
  tools.push({name: 'nginx stream module', aptPackage: 'libnginx-mod-stream', ok: sm.ok, detail: sm.detail})
  return {tools, streamModule: 'path' in sm ? sm.path : undefined}
}

export function missingPackages(report: ToolReport): string[] {
  return [...new Set(report.tools.filter((t) => !t.ok).map((t) => t.aptPackage))]
}

export function aptCommand(packages: string[], root: boolean): string {
  const sudo = root ? '' : 'sudo '
  return `${sudo}apt-get update && ${sudo}env DEBIAN_FRONTEND=noninteractive apt-get install -y ${packages.join(' ')}`
}

/** The message for a bench that cannot run: what is missing, and the two ways to install it. */
export function missingMessage(report: ToolReport, root: boolean): string {
  const lines = report.tools.filter((t) => !t.ok).map((t) => `  ${t.name}: ${t.detail} (Debian/Ubuntu package ${t.aptPackage})`)
  return ['The bench needs tools that are not installed:', ...lines, '', 'Install them with:', `  ${aptCommand(missingPackages(report), root)}`,
    'or let the bench run that command: npm run bench -- --install'].join('\n')
}

/** Runs apt-get (update, then install) in the foreground, showing its output. Returns success. */
export function installPackages(packages: string[], root: boolean): boolean {
  const run = (args: string[]): boolean => {
    const [cmd, ...rest] = root ? args : ['sudo', ...args]
    return spawnSync(cmd, rest, {stdio: 'inherit', env: {...process.env, DEBIAN_FRONTEND: 'noninteractive'}}).status === 0
  }
  return run(['apt-get', 'update']) && run(['apt-get', 'install', '-y', ...packages])
}
