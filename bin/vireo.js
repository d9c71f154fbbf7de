#!/usr/bin/env node
// The vireo command. Run `npm run build` first (scripts/setup.sh does).
// vCPU threads are started before the rest of vireo loads, so their start-up overlaps with it.
import { prewarmForArgs } from '../dist/src/cli/prewarm.js';

const argv = process.argv.slice(2);
if (argv[0] === 'run') prewarmForArgs(argv);
const { main } = await import('../dist/src/cli/main.js');
process.exitCode = await main(argv);
