/**
 * What package.json promises outside the code: the licence it names is the LICENSE file's, and the
 * oclif plugins and hooks it registers exist (a missing one makes every command fail to load).
 */
import {test} from 'node:test'
import assert from 'node:assert/strict'
import {existsSync, readFileSync} from 'node:fs'
import {fileURLToPath} from 'node:url'

const root = new URL('../../../', import.meta.url)
const pkg = JSON.parse(readFileSync(new URL('package.json', root), 'utf8'))

test('issue 11.29: LICENSE holds the MIT text that package.json names, for the divert authors', () => {
  assert.equal(pkg.license, 'MIT')
  const license = readFileSync(new URL('LICENSE', root), 'utf8')
  assert.match(license, /^MIT License\n\nCopyright \(c\) 2026 the divert authors\n/)
  assert.match(license, /Permission is hereby granted, free of charge, to any person obtaining a copy/)
  assert.match(license, /THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND/)
})

test('issue 11.29: the oclif plugins (help, shell completion) are dependencies and the not-found hook is built', () => {
  for (const plugin of pkg.oclif.plugins as string[]) {
    assert.ok(pkg.dependencies[plugin], `${plugin} is a dependency`)
    assert.ok(existsSync(new URL(`node_modules/${plugin}/package.json`, root)), `${plugin} is installed`)
  }
  assert.ok(pkg.oclif.plugins.includes('@oclif/plugin-autocomplete'))
  for (const hook of Object.values(pkg.oclif.hooks as Record<string, string>)) assert.ok(existsSync(fileURLToPath(new URL(hook, root))), hook)
})
