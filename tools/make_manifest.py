"""Write the SHA-256 manifest of the public FERGI release shipped with fergi.

Usage: python tools/make_manifest.py ../shared/fergi-public

Only files of the pinned commit are listed: data/ and preparation/, less
preparation/AU4_excluded_participants.json (added to the shared copy from an
earlier commit).
"""

import gzip
import hashlib
import sys
from pathlib import Path

NOT_IN_COMMIT = {"preparation/AU4_excluded_participants.json"}

root = Path(sys.argv[1])
lines = []
for folder in ("data", "preparation"):
    for file in sorted((root / folder).rglob("*")):
        name = file.relative_to(root).as_posix()
        if file.is_file() and name not in NOT_IN_COMMIT:
            lines.append(f"{hashlib.sha256(file.read_bytes()).hexdigest()}  {name}")
out = Path(__file__).resolve().parents[1] / "src" / "fergi" / "datasets" / "fergi_manifest.txt.gz"
out.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))
print(f"{len(lines)} files -> {out}")
