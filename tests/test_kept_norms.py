"""KeptNorms, the one cache of ‖θ_i‖² that both one-pass kernels leave for the next step."""

from __future__ import annotations

import warnings

import torch

from normctl.optim._kept_norms import KeptNorms


def make_params():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=g) for shape in [(4, 3), (7,), (0,), (2, 2, 2)]]


def true_norm_sq(params):
    return torch.stack([p.square().sum() for p in params]).float()


def kept_after_a_step(params, scale=1.0):
    """A cache holding what a kernel would hand back (times ``scale``, to tell kept from measured)."""
    kept = KeptNorms()
    kept.keep(params, true_norm_sq(params).double() * scale)
    return kept


def test_the_kernels_own_vector_is_served_for_the_same_tensors():
    params = make_params()
    vector = true_norm_sq(params)
    kept = KeptNorms()
    kept.keep(params, vector)
    assert kept.norm_sq_vector(params) is vector  # no stack, no copy: the CUDA kernel reads it as is


def test_kept_norms_are_served_per_tensor_and_in_any_order():
    params = make_params()
    kept = kept_after_a_step(params, scale=4.0)  # kept norms are twice the true ones
    norms = kept.tensor_norms(params)
    torch.testing.assert_close(torch.stack(norms), 2 * true_norm_sq(params).sqrt())
    order = [params[3], params[0]]
    torch.testing.assert_close(kept.norm_sq_vector(order), 4 * true_norm_sq(order))


def test_a_tensor_changed_in_place_is_measured_and_the_others_kept():
    params = make_params()
    kept = kept_after_a_step(params, scale=4.0)
    with torch.no_grad():
        params[1].mul_(3.0)  # bumps the version counter
    expected = 4 * true_norm_sq(params)
    expected[1] = true_norm_sq(params[1:2])[0]
    torch.testing.assert_close(kept.norm_sq_vector(params), expected)


def test_a_write_through_data_that_changes_the_first_element_is_seen_with_one_warning():
    params = make_params()
    kept = kept_after_a_step(params, scale=4.0)
    params[0].data.mul_(0.5)  # neither the version counter nor the storage moves
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        norms = kept.tensor_norms(params)
        kept.tensor_norms(params)
    torch.testing.assert_close(norms[0], params[0].norm())
    torch.testing.assert_close(norms[1], 2 * params[1].norm())
    assert len([w for w in caught if "p.data" in str(w.message)]) == 1


def test_other_tensors_and_a_cleared_cache_are_measured():
    params = make_params()
    kept = kept_after_a_step(params, scale=4.0)
    moved = [params[0].clone()]  # another tensor object: never kept
    torch.testing.assert_close(kept.norm_sq_vector(moved), true_norm_sq(moved))
    kept.clear()
    torch.testing.assert_close(kept.norm_sq_vector(params), true_norm_sq(params))


def test_the_whole_vector_is_not_served_when_one_tensor_of_the_batch_changed():
    params = make_params()
    vector = true_norm_sq(params) * 4
    kept = KeptNorms()
    kept.keep(params, vector)
    with torch.no_grad():
        params[3].mul_(2.0)  # the last tensor: the first is still the batch's own
    served = kept.norm_sq_vector(params)
    assert served is not vector
    torch.testing.assert_close(served[:3], vector[:3])
    torch.testing.assert_close(served[3], true_norm_sq(params[3:])[0])
