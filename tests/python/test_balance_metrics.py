"""Per-step collapse and balance metrics, recomputed from the per-layer token counts."""
import h5py
import numpy as np


def test_balance_metrics_match_token_counts(tmp_path, run_moe):
    E, K, B, L = 8, 2, 256, 2
    _, out = run_moe(tmp_path, 2, experts=E, top_k=K, batch_tokens=B, layers=L, steps=15,
                     capacity_factor=1.0, router_init_scale=20.0, seed=5)
    with h5py.File(out, "r") as f:
        m = f["metrics"]
        per_layer = m["expert_tokens_per_layer"][:].astype(float)  # S x L x E
        mean = per_layer.mean(axis=2)
        expect_max_over_mean = (per_layer.max(axis=2) / mean).mean(axis=1)
        expect_cv = (per_layer.std(axis=2) / mean).mean(axis=1)
        np.testing.assert_allclose(m["max_over_mean_load"][:], expect_max_over_mean, rtol=1e-12)
        np.testing.assert_allclose(m["load_cv"][:], expect_cv, rtol=1e-12)
        np.testing.assert_array_equal(m["unused_experts"][:], (per_layer == 0).sum(axis=(1, 2)))
        np.testing.assert_array_equal(m["starved_experts"][:], (per_layer < B * K / (10 * E)).sum(axis=(1, 2)))
        entropy = m["gate_entropy"][:]
        assert np.all(entropy >= 0) and np.all(entropy <= np.log(E) + 1e-12)
        mass = m["gate_mass"][:]
        assert mass.shape == (15, E)
        np.testing.assert_allclose(mass.sum(axis=1), 1.0, rtol=1e-5)
        # A large router init makes routing decisive: entropy well below uniform.
        assert entropy[0] < 0.9 * np.log(E)


def test_uniform_router_has_maximal_entropy(tmp_path, run_moe):
    E = 4
    _, out = run_moe(tmp_path, 1, experts=E, top_k=1, steps=2, router_init_scale=1e-12, lr=1e-9, precision="fp64")
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["metrics/gate_entropy"][0], np.log(E), rtol=1e-9)
        # Logits of order 1e-6 (init std sqrt(1e-12 / D) times O(1) inputs).
        np.testing.assert_allclose(f["metrics/gate_mass"][0], np.full(E, 1 / E), rtol=1e-4)
