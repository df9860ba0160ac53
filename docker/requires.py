"""Print a wheel's run-time requirements for this interpreter, one a line, less the names given.

    python requires.py dist/seqserve-*.whl --without fbgemm-gpu-cpu > requires.txt

The CUDA image installs fbgemm-gpu (the CUDA build) where the package asks for fbgemm-gpu-cpu:
both ship the same `fbgemm_gpu` module, so only one may be installed. Extras are left out;
environment markers are evaluated here. Needs `packaging` (pinned in constraints.txt).
"""

from __future__ import annotations

import argparse
import email.parser
import zipfile

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def requirements(wheel: str, without: set[str]) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.HeaderParser().parsestr(z.read(name).decode())
    drop = {canonicalize_name(n) for n in without}
    out = []
    for line in metadata.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if canonicalize_name(req.name) in drop:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        out.append(str(req))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel")
    ap.add_argument("--without", action="append", default=[], help="a name to leave out")
    args = ap.parse_args()
    print("\n".join(requirements(args.wheel, set(args.without))))


if __name__ == "__main__":
    main()
