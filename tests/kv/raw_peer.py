"""A peer process holding one buffer of random bytes for the cross-memory attach tests.

argv: nbytes seed. Prints "pid address" on stdout, then obeys stdin lines:
  dump PATH   write the buffer to PATH, print "ok"
  exit        leave
"""
import sys

import numpy as np


def main():
    n, seed = int(sys.argv[1]), int(sys.argv[2])
    buf = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)
    print(f"{__import__('os').getpid()} {buf.__array_interface__['data'][0]}", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "exit":
            return
        if cmd[0] == "dump":
            buf.tofile(cmd[1])
            print("ok", flush=True)


if __name__ == "__main__":
    main()
