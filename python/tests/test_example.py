"""examples/python_pair.py: two processes negotiate through the binary."""

from __future__ import annotations

import os
import subprocess
import sys
import unittest

from support import REPO, start_server, stop_server


class Example(unittest.TestCase):
    def test_two_example_processes_negotiate(self):
        server, url = start_server()
        try:
            room = f"example-{os.getpid()}"
            run = lambda: subprocess.Popen(  # noqa: E731
                [sys.executable, str(REPO / "examples/python_pair.py"), url, room],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            first, second = run(), run()
            out = [p.communicate(timeout=20)[0] for p in (first, second)]
            self.assertEqual([p.returncode for p in (first, second)], [0, 0], out)
            # Whichever joined later initiated; the other answered.
            roles = sorted(o.split()[0] for o in out)
            self.assertEqual(roles, ["answerer", "initiator"], out)
            self.assertTrue(all(f"negotiated in room {room}" in o for o in out), out)
        finally:
            stop_server(server)


if __name__ == "__main__":
    unittest.main()
