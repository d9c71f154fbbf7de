#!/usr/bin/env node
// The vireo command. Run `npm run build` first (scripts/setup.sh does).
import { main } from '../dist/src/cli/main.js';

process.exitCode = await main(process.argv.slice(2));
