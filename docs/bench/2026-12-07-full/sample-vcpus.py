#!/usr/bin/env python3
# Samples every lab guest's vCPUs (QEMU monitor: `info registers -a`) every PERIOD s into OUT:
# one line per sample: host time, run directory, then per vCPU "ip/halted/cr0". Guests need a
# monitor: run the benchmark with OVERBOOT_LAB_MONITOR=1. Usage: sample-vcpus.py OUT [PERIOD]
import socket, time, sys, re, os, glob
# Polls every guest monitor socket under target/lab/*/monitor.sock for RIP of all vCPUs.
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..'))
out = open(sys.argv[1], 'a')
period = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05
conns = {}
def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(path)
    buf = b''
    while b'(qemu)' not in buf:
        buf += s.recv(4096)
    return s
while True:
    for path in glob.glob(os.path.join(ROOT, 'target/lab/*/monitor.sock')):
        try:
            if path not in conns:
                conns[path] = connect(path)
            s = conns[path]
            t = time.time()
            s.sendall(b'info registers -a\n')
            buf = b''
            while not buf.rstrip().endswith(b'(qemu)'):
                chunk = s.recv(65536)
                if not chunk: raise OSError('closed')
                buf += chunk
            text = buf.decode(errors='replace')
            cpus = re.split(r'CPU#\d+', text)[1:]
            fields = []
            for c in cpus:
                ip = re.search(r'[RE]IP=([0-9a-f]+)', c)
                h = re.search(r'HLT=(\d)', c)
                cr0 = re.search(r'CR0=([0-9a-f]+)', c)
                fields.append('%s/%s/%s' % (ip.group(1) if ip else '-', h.group(1) if h else '-', cr0.group(1) if cr0 else '-'))
            out.write('%.3f %s %s\n' % (t, os.path.basename(os.path.dirname(path)), ' '.join(fields)))
            out.flush()
        except Exception as e:
            conns.pop(path, None)
    time.sleep(period)
