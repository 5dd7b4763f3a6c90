/**
 * RuleService with a shared store (issue 14), through a fake RuleStore: a change is saved as a
 * change (what was put, what was removed, by whom), and an id the store says another rule holds is
 * drawn again — ids are fleet-wide.
 */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import pino from 'pino'
import {RuleService} from '../../src/rules/service.js'
import {RuleTable} from '../../src/rules/table.js'
import {RuleIdTaken, type RuleChange, type RuleStore, type StoredRule} from '../../src/rules/state.js'
import {RecordingSet} from '../../src/capture/recorder.js'
import type {Backend} from '../../src/backends/backend.js'
import type {Config} from '../../src/config/types.js'

function service(store: RuleStore): RuleService {
  const ids = ['r000001', 'r000002', 'r000003']
  const s = new RuleService({
    table: new RuleTable({newId: () => ids.shift()!}), recordings: new RecordingSet(), logger: pino({level: 'silent'}),
    config: () => ({file: '/etc/divert/divert.yaml', listeners: [], backends: new Map([['staging', {}]]), captureMaxBytes: 1} as unknown as Config),
    backends: () => new Map([['staging', {} as Backend]]),
  })
  s.store = store
  return s
}

test('issue 14: a change reaches the store as a change, and a taken id is drawn again', async () => {
  const changes: RuleChange[] = []
  let refuse = 1
  const store: RuleStore = {
    path: 'fake://store',
    load: async () => ({rules: []}),
    save: async (_rules: StoredRule[], change?: RuleChange) => {
      if (change!.put.length > 0 && refuse-- > 0) throw new RuleIdTaken(`id ${change!.put[0].id} is taken`)
      changes.push(change!)
    },
  }
  const s = service(store)
  const {rule} = await s.add({source: '192.0.2.7', to: 'staging'}, 'alice')
  assert.equal(rule.id, 'r000002', 'the first id was refused: the rule took the next one')
  assert.deepEqual(s.table.snapshot().map((r) => r.id), ['r000002'], 'and nothing of the refused attempt stayed')
  assert.deepEqual(changes.map((c) => [c.put.map((r) => r.id), c.remove.map((r) => r.id), c.by]), [[['r000002'], [], 'alice']])
  await s.remove('192.0.2.7', undefined, 'bob')
  assert.deepEqual(changes[1].remove.map((r) => r.id), ['r000002'])
  assert.equal(changes[1].by, 'bob')
})
