"""The packaged installation's entry point: ``python3 -I /usr/lib/wildboar MODULE [ARGS]``.

Owns: running one of wildboar's modules from this directory, which holds the packages
``wildboar`` and ``supervisor`` and, in ``vendor/``, what Debian 12 does not package
(msgspec). Python puts the directory it runs first on ``sys.path``, even isolated (``-I``),
so the code that runs is this directory's, never what another package installs under the
same name (Debian's ``supervisor`` in dist-packages); ``vendor/`` comes last, so a Debian
package of the same library, once there is one, is preferred.
Security: root starts it (``wildboar serve`` as root, ``wildboar spool``): only the three
entry modules may be named, and ``-I`` keeps the environment and the current directory out.
"""

import os
import runpy
import sys

MODULES = ("wildboar.cli", "supervisor", "wildboar.worker")

here = os.path.dirname(os.path.abspath(__file__))
if sys.path[0] != here:
    sys.exit(f"run this as: python3 -I {here} MODULE")
sys.path.append(os.path.join(here, "vendor"))
if len(sys.argv) < 2 or sys.argv[1] not in MODULES:
    sys.exit(f"usage: python3 -I {here} {{{','.join(MODULES)}}} [ARGS]")
module = sys.argv.pop(1)
runpy.run_module(module, run_name="__main__", alter_sys=True)
