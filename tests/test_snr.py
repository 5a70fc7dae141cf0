"""Gradient SNR (Rainforth et al. 2018): the per-coordinate statistic, its k-dependence on a linear-Gaussian model,
and ``iwae snr`` on a saved run."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from conftest import binary_batch, read_json, tiny_model

import iwae
from iwae.analysis.snr import coordinate_snr, gradient_snr
from iwae.cli import main
from iwae.util.streams import seed_of


def test_coordinate_snr_matches_hand_computed_mean_and_std():
    """|mean| / std (ddof 1) per coordinate; a coordinate with the same value on every draw has no SNR (NaN)."""
    g = torch.tensor([[1.0, -2.0, 0.0, 3.0], [3.0, -2.5, 0.0, 3.0], [2.0, -1.0, 0.0, 3.0], [6.0, -2.5, 0.0, 3.0]])
    want = g.mean(0).abs() / g.std(0)  # torch.std is ddof 1
    got = coordinate_snr(iter(g))
    torch.testing.assert_close(got[:2], want[:2].double())
    assert got[0].item() == pytest.approx(3.0 / math.sqrt(14 / 3))  # mean 3, squared deviations 4+0+1+9 over 3
    assert torch.isnan(got[2:]).all()
    # Welford's update keeps precision when the mean dwarfs the spread (E[g^2] - E[g]^2 would cancel to 0 in float32)
    big = 1e4 + torch.tensor([0.0, 1.0, 2.0]).unsqueeze(1)
    assert coordinate_snr(iter(big)).item() == pytest.approx(10_001.0)
    with pytest.raises(ValueError, match="need at least 2 gradient draws"):
        coordinate_snr(iter(g[:1]))


def _draws_by_hand(model, x, k, estimator, n, seed):
    """Gradient draws recomputed independently of iwae.analysis.snr, on the noise gradient_snr documents (the stream
    ("snr", "k", k) of the base seed b)."""
    base = int(torch.randint(2**62, (1,), generator=torch.Generator().manual_seed(seed)).item())
    gen = torch.Generator().manual_seed(seed_of(base, "snr", "k", k))
    enc, dec = [], []
    for _ in range(n):
        model.zero_grad()
        (-iwae.objective(model, x, k, "iwae", estimator, generator=gen)).backward()
        enc.append(torch.cat([p.grad.flatten() for p in model.encoder.parameters()]))
        dec.append(torch.cat([p.grad.flatten() for p in model.decoder.parameters()]))
    return torch.stack(enc), torch.stack(dec)


def test_gradient_snr_structure_and_summary_match_stacked_draws():
    model = tiny_model(x_dim=4, latent_dims=(2, 2))
    x = binary_batch(3, 4)
    ks, ests = [1, 4], ["reparam", "stl", "dreg"]
    r = gradient_snr(model, x, ks, ests, n_draws=20, generator=torch.Generator().manual_seed(5))
    assert r["ks"] == ks and r["estimators"] == ests and r["n_draws"] == 20 and r["batch"] == 3
    assert r["coordinates"]["encoder"] == sum(p.numel() for p in model.encoder.parameters())
    assert r["floor"] == pytest.approx(math.sqrt(2 / (math.pi * 20)))
    for est in ests:
        assert set(r["snr"][est]) == {f"{n}{s}" for n in ("encoder", "decoder") for s in ("", "_median", "_excluded")}
        assert all(len(v) == len(ks) for v in r["snr"][est].values())
    for i, k in enumerate(ks):
        enc, dec = _draws_by_hand(model, x, k, "dreg", 20, seed=5)
        for net, g in (("encoder", enc), ("decoder", dec)):
            per = g.mean(0).abs() / g.std(0)
            per = per[g.std(0) > 0]
            assert r["snr"]["dreg"][net][i] == pytest.approx(per.mean().item(), rel=1e-9)
            assert r["snr"]["dreg"][f"{net}_median"][i] == pytest.approx(per.median().item(), rel=1e-9)
    # Common random numbers: the three estimators share Eq. 14's decoder gradient, and at k = 1 DReG is STL.
    for net in ("decoder", "decoder_median"):
        assert r["snr"]["stl"][net] == pytest.approx(r["snr"]["reparam"][net], rel=1e-9)
        assert r["snr"]["dreg"][net] == pytest.approx(r["snr"]["reparam"][net], rel=1e-9)
    assert r["snr"]["dreg"]["encoder"][0] == pytest.approx(r["snr"]["stl"]["encoder"][0], rel=1e-9)


def test_gradient_snr_of_another_bound_reads_its_parameters():
    """The bound is a choice: VR at alpha 0 is L_k itself (the same draws give the same SNR), the ELBO is not, and a
    parameter out of its range is refused before any draw."""
    model, x = tiny_model(x_dim=4, latent_dims=(2,)), binary_batch(3, 4)
    run = functools.partial(gradient_snr, model, x, [1, 4], ["reparam"], n_draws=10)
    iwae_snr = run(generator=torch.Generator().manual_seed(5))
    vr0 = run(generator=torch.Generator().manual_seed(5), bound="vr", params={"alpha": 0.0})
    assert vr0["snr"] == iwae_snr["snr"] and (vr0["bound"], vr0["params"]) == ("vr", {"alpha": 0.0})
    assert iwae_snr["bound"] == "iwae"
    vae = run(generator=torch.Generator().manual_seed(5), bound="vae")
    assert vae["snr"]["reparam"]["encoder"][1] != iwae_snr["snr"]["reparam"]["encoder"][1]
    assert vae["snr"]["reparam"]["encoder"][0] == iwae_snr["snr"]["reparam"]["encoder"][0]  # k = 1: the same bound
    with pytest.raises(ValueError, match="alpha"):
        run(bound="vr", params={"alpha": 1.5})


def test_gradient_snr_refuses_bad_requests():
    model, x = tiny_model(), torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="n_draws must be at least 2"):
        gradient_snr(model, x, [1], ["reparam"], n_draws=1)
    with pytest.raises(ValueError, match="unknown estimator 'reinforce'"):
        gradient_snr(model, x, [1], ["reinforce"])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        gradient_snr(model, x, [0], ["dreg"])


def _near_optimal_linear_gaussian(d: int = 5, perturb: float = 0.05, seed: int = 0) -> iwae.IWAE:
    """p(h) = N(0, I), p(x | h) = N(h, I); q(h | x) = N(x/2 + noise, 1/2 + noise): the true posterior, perturbed.

    Rainforth et al. (2018)'s setting for their SNR theorem: q near the posterior, so k = 1000 is in the large-k
    regime where the reparameterised IWAE encoder SNR is O(1/sqrt(k)) and DReG's grows.
    """
    g = torch.Generator().manual_seed(seed)
    model = iwae.IWAE(d, [d], [[]], [[]], "gaussian").double()  # empty trunks: every conditional is linear
    enc, dec = model.encoder[0], model.decoder[0]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        dec.mean.weight.copy_(torch.eye(d))
        enc.mean.weight.copy_(0.5 * torch.eye(d) + perturb * torch.randn(d, d, generator=g, dtype=torch.float64))
        enc.mean.bias.copy_(perturb * torch.randn(d, generator=g, dtype=torch.float64))
        enc.log_std.bias.copy_(0.5 * math.log(0.5) + perturb * torch.randn(d, generator=g, dtype=torch.float64))
    return model


def test_iwae_encoder_snr_falls_with_k_while_dregs_rises():
    """Rainforth et al. (2018): reparam IWAE encoder SNR falls with k, decoder SNR rises; Tucker et al. (2018): DReG's
    encoder SNR rises."""
    model = _near_optimal_linear_gaussian()
    x = 2**0.5 * torch.randn(4, 5, generator=torch.Generator().manual_seed(100), dtype=torch.float64)  # x ~ p(x)
    r = gradient_snr(model, x, [1, 1000], ["reparam", "dreg"], n_draws=200, generator=torch.Generator().manual_seed(0))
    snr = r["snr"]
    assert snr["reparam"]["encoder"][1] < 0.5 * snr["reparam"]["encoder"][0]
    assert snr["dreg"]["encoder"][1] > 3 * snr["dreg"]["encoder"][0]
    assert snr["dreg"]["encoder"][1] > 20 * snr["reparam"]["encoder"][1]
    assert snr["reparam"]["decoder"][1] > 10 * snr["reparam"]["decoder"][0]


def test_snr_command_on_a_saved_run(tiny_run, tmp_path, capsys):
    run, out = tiny_run, tmp_path / "snr"
    args = ["--k", "1,3", "--estimators", "reparam,dreg", "--draws", "4", "--batch", "5", "--quiet"]
    assert main(["snr", str(run), *args, "--out", str(out)]) == 0
    assert "| k | encoder: reparam | encoder: dreg | decoder: reparam | decoder: dreg |" in capsys.readouterr().out
    result = read_json(out / "snr.json")
    assert result["ks"] == [1, 3] and result["n_draws"] == 4 and result["batch"] == 5
    assert result["model"]["run_dir"] == str(run) and not result["model"]["trained_here"]
    for est in ("reparam", "dreg"):
        assert all(v > 0 for net in ("encoder", "decoder") for v in result["snr"][est][net])
        assert set(result["slopes"][est]) == {"encoder", "decoder"}
    table = (out / "snr.md").read_text()
    assert "| 3 | " in table and "slope of log SNR vs log k" in table and "draws of the IWAE bound L_k" in table
    assert (out / "snr.png").stat().st_size > 0
    vr = tmp_path / "snr-vr"
    vr_args = [*args[:2], "--estimators", "reparam,stl", *args[4:]]  # DReG is defined for the IWAE bound only
    assert main(["snr", str(run), *vr_args, "--bound", "vr", "--alpha", "0.5", "--out", str(vr)]) == 0
    assert (read_json(vr / "snr.json")["bound"], read_json(vr / "snr.json")["params"]) == ("vr", {"alpha": 0.5})
    assert "draws of the vr bound, alpha = 0.5 per (k, estimator)" in (vr / "snr.md").read_text()


@pytest.mark.slow  # trains a small model (5 s)
def test_snr_command_trains_its_own_model_once(data_dir, tmp_path, capsys):
    out = tmp_path / "snr"
    args = ["snr", "--k", "1,2", "--estimators", "stl", "--draws", "3", "--batch", "3", "--train-passes", "0.01"]
    assert main([*args, "--data-dir", data_dir, "--quiet", "--out", str(out)]) == 0
    first = read_json(out / "snr.json")
    assert first["model"]["trained_here"] and first["model"]["k"] == 5 and first["model"]["latent_dims"] == [50]
    assert (out / "model" / "config.json").is_file()
    assert main([*args, "--data-dir", data_dir, "--quiet", "--out", str(out)]) == 0  # reuses out/model
    second = read_json(out / "snr.json")
    assert not second["model"]["trained_here"] and second["snr"] == first["snr"]


def test_snr_command_refuses_bad_estimator_before_training(tmp_path, capsys):
    assert main(["snr", "--estimators", "reparam,bogus", "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert "unknown estimator 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "o" / "model").exists()
