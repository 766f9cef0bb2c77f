"""The cloak tool: a person's mask on their own photos and videos (the ``opom`` command).

- :func:`opom.cloak.enroll.enroll` — photos of one person -> that person's mask file;
- :func:`opom.cloak.protect.protect` — photos, folders and videos -> protected copies + a per-file report;
- :func:`opom.cloak.check.check` — clean vs protected photos against a local panel of face-recognition models.
"""

from opom.cloak.check import check
from opom.cloak.enroll import enroll
from opom.cloak.protect import protect

__all__ = ["check", "enroll", "protect"]
