"""``groundup.nn.functional``: ``groundup.functional`` under torch's path, so that
``import groundup.nn.functional as F`` works as ``import torch.nn.functional as F`` does.

It is the same module object (``groundup.nn.functional is groundup.functional``), not a copy.
"""

import sys

from groundup import functional as _functional

sys.modules[__name__] = _functional
