"""English fix-ups shared by every caption writer (the synthetic world's alt-texts and captioner, the simulated
rewriter), so none of them imports another to get them."""

from __future__ import annotations

import re


def articles(text: str) -> str:
    """'a orange star' -> 'an orange star' (templates write 'a' everywhere)."""
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)
