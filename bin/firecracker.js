#!/usr/bin/env node
// vireo-firecracker: Firecracker's command line and API, served by vireo. Run `npm run build` first.
import { firecrackerMain } from '../dist/src/cli/firecracker.js';

process.exitCode = await firecrackerMain(process.argv.slice(2));
