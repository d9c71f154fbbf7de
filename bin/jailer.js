#!/usr/bin/env node
// vireo-jailer: Firecracker's jailer command line; jails vireo-firecracker. Run `npm run build` first.
import { jailerMain } from '../dist/src/cli/jailer.js';

process.exitCode = jailerMain(process.argv.slice(2));
