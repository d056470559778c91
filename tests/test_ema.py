import torch

from safebasin.ema import EMA


def test_update_is_the_papers_rule_and_exact_at_the_ends():
    torch.manual_seed(0)
    theta0 = [torch.randn(5, 3), torch.randn(7)]
    live = [t.clone() for t in theta0]
    emas = {b: EMA(live, b) for b in (0.0, 0.7, 1.0)}
    for _ in range(3):
        for t in live:
            t.add_(torch.randn_like(t))
        expected_07 = [0.7 * s + 0.3 * t for s, t in zip(emas[0.7].shadow, live)]
        for e in emas.values():
            e.update(live)
        for got, want in zip(emas[0.7].shadow, expected_07):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert all(torch.equal(s, t) for s, t in zip(emas[1.0].shadow, theta0))
    assert all(torch.equal(s, t) for s, t in zip(emas[0.0].shadow, live))


def test_shadow_is_float32_copy_and_can_live_on_cpu():
    p = [torch.randn(4, dtype=torch.bfloat16)]
    e = EMA(p, 0.9, device="cpu")
    assert e.shadow[0].dtype == torch.float32 and e.shadow[0].data_ptr() != p[0].data_ptr()
    p[0].add_(1)
    e.update(p)
    torch.testing.assert_close(e.shadow[0], 0.9 * (p[0].float() - 1) + 0.1 * p[0].float(), rtol=1e-2, atol=1e-2)
    target = [torch.zeros(4, dtype=torch.bfloat16)]
    e.copy_to(target)
    assert target[0].dtype == torch.bfloat16 and torch.allclose(target[0].float(), e.shadow[0], atol=1e-2)


def test_state_dict_round_trip():
    p = [torch.randn(3)]
    a = EMA(p, 0.5)
    p[0].add_(2)
    a.update(p)
    b = EMA([torch.zeros(3)], 0.1)
    b.load_state_dict(a.state_dict())
    assert b.beta == 0.5 and torch.equal(b.shadow[0], a.shadow[0])


def test_swapped_holds_the_average_inside_and_restores_the_live_weights():
    live = [torch.randn(4), torch.randn(2, 2)]
    e = EMA(live, 0.5)
    for t in live:
        t.add_(1.0)
    e.update(live)
    before = [t.clone() for t in live]
    with e.swapped(live):
        assert all(torch.equal(t, s) for t, s in zip(live, e.shadow))
    assert all(torch.equal(t, b) for t, b in zip(live, before))
