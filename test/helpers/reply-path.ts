/**
 * What a router running divert with `source: client` needs so that replies to the device's spoofed
 * address reach divert's socket (README "Upstream source address"): packets of a connection that
 * belongs to a transparent socket are marked, and marked packets are delivered locally. Installed by a
 * test, by hand, in a namespace it created; removed with the namespace.
 */
import {writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {whichCommand, type Lab} from './netns.js'

export const NFT = whichCommand('nft') ?? 'nft'
const IP = whichCommand('ip') ?? 'ip'

/** nftables table `table` (the test's own name) in `ns`, with `extra` chains, plus the fwmark 1 → table 100 local route. */
export async function installReplyPath(lab: Lab, ns: string, dir: string, table: string, extra = ''): Promise<void> {
  const file = join(dir, `${table}.nft`)
  await writeFile(file, `table inet ${table} {
  chain pre {
    type filter hook prerouting priority mangle; policy accept;
    meta l4proto { tcp, udp } socket transparent 1 meta mark set 1 accept
  }
${extra}}
`)
  await lab.run(ns, NFT, ['-f', file])
  await lab.run(ns, IP, ['rule', 'add', 'fwmark', '1', 'lookup', '100'])
  await lab.run(ns, IP, ['route', 'add', 'local', '0.0.0.0/0', 'dev', 'lo', 'table', '100'])
}
