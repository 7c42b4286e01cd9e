"""The zoo: importing this package registers every module (one file per paper)."""

from attnbench.modules import (  # noqa: F401  (imported for their register() calls)
    acmix,
    cloformer,
    danet,
    epsa,
    external,
    mhsa,
    sk,
    smt_sam,
    van_lka,
)
