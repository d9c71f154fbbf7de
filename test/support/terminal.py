#!/usr/bin/env python3
"""Runs a command on a pseudo-terminal, as a person at a terminal would, and reports what happened.

usage: pty.py SCRIPT_JSON -- COMMAND...
SCRIPT_JSON is a list of steps: {"expect": "text"} waits (10 s at most) until the output contains text;
{"send": "text"} types text (\\u0001 is Ctrl-A). At the end the output is drained until the child
exits (10 s at most). Prints one JSON line: {"status": N, "output": "...", "timedOut": bool}.
"""
import json, os, pty, select, signal, sys, time

def main():
    sep = sys.argv.index('--')
    steps = json.loads(sys.argv[1])
    cmd = sys.argv[sep + 1:]
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(cmd[0], cmd)
    out = b''
    timed_out = False

    def read_some(deadline):
        nonlocal out
        while time.time() < deadline:
            r, _, _ = select.select([fd], [], [], 0.05)
            if r:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    return False
                if not data:
                    return False
                out += data
                return True
        return True

    for step in steps:
        if 'expect' in step:
            deadline = time.time() + 10
            want = step['expect'].encode()
            while want not in out and time.time() < deadline:
                if not read_some(deadline):
                    break
            if want not in out:
                timed_out = True
                break
        elif 'send' in step:
            os.write(fd, step['send'].encode())
    deadline = time.time() + 10
    status = None
    while time.time() < deadline:
        read_some(time.time() + 0.1)
        wpid, st = os.waitpid(pid, os.WNOHANG)
        if wpid == pid:
            status = os.waitstatus_to_exitcode(st)
            break
    if status is None:
        timed_out = True
        os.kill(pid, signal.SIGKILL)
        _, st = os.waitpid(pid, 0)
        status = os.waitstatus_to_exitcode(st)
    try:
        while read_some(time.time() + 0.05):
            pass
    except Exception:
        pass
    print(json.dumps({'status': status, 'output': out.decode('latin1'), 'timedOut': timed_out}))

main()
