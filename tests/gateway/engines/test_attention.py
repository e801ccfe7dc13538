"""The decode attention kernel of the transformers engine against PyTorch's SDPA."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from swiftmesh.services.gateway.engines.attention import batched_decode_attention


@pytest.mark.parametrize("with_mask", [True, False])
@pytest.mark.parametrize(("hq", "hk"), [(4, 4), (9, 3)])
def test_matches_sdpa_for_one_token_queries(with_mask, hq, hk):
    g = torch.Generator().manual_seed(0)
    b, t, d = 5, 23, 16
    q = torch.randn(b, hq, 1, d, generator=g)
    k = torch.randn(b, hk, t, d, generator=g)
    v = torch.randn(b, hk, t, d, generator=g)
    mask = None
    if with_mask:
        mask = torch.ones(b, 1, 1, t, dtype=torch.bool)
        mask[1, ..., :7] = False  # left padding of row 1
        mask[3, ..., :20] = False
    module = types.SimpleNamespace(num_key_value_groups=hq // hk, is_causal=True)
    out, _ = batched_decode_attention(module, q, k, v, mask, scaling=d ** -0.5)
    rep = hq // hk
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), attn_mask=mask)
    assert out.shape == (b, 1, hq, d)
    torch.testing.assert_close(out, ref.transpose(1, 2), rtol=1e-5, atol=1e-5)
    if with_mask:  # padded keys have no influence
        k2, v2 = k.clone(), v.clone()
        k2[3, :, :20] = 1e3
        v2[3, :, :20] = -1e3
        out2, _ = batched_decode_attention(module, q, k2, v2, mask, scaling=d ** -0.5)
        torch.testing.assert_close(out2, out)


def test_longer_queries_go_to_sdpa():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    module = types.SimpleNamespace(num_key_value_groups=1, is_causal=True)
    out, _ = batched_decode_attention(module, q, k, v, None, scaling=8 ** -0.5)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, ref.transpose(1, 2))
