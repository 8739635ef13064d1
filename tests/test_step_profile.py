"""experiments/step_profile.py: the per-operation profile and the matmul inventory of the step."""

import pytest

from experiments import step_profile

# Full tier (make test-all): see README's test tiers.
pytestmark = pytest.mark.slow


def test_matmul_sizes_and_op_kinds():
    # (2, 3, 4) x (2, 4, 5), batch dim 0, contracting lhs 2 / rhs 1.
    assert step_profile.matmul_sizes((2, 3, 4), (2, 4, 5), ((2,), (1,), (0,), (0,))) == (2, 3, 4, 5)
    # weight gradient: (B*L, D) contracted over rows with (B*L, F) -> D x F
    assert step_profile.matmul_sizes((640, 96), (640, 384), ((0,), (0,), (), ())) == (1, 96, 640, 384)
    assert step_profile.op_kind('ynn_fusion.12') == 'ynn_fusion'
    assert step_profile.op_kind('wrapped_reduce-window.3') == 'wrapped_reduce-window'


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_profile_of_the_tiny_step():
    r = step_profile.run('tiny', batch=4, fs=100.0, keep_ratio=0.2, steps=2, matmuls=True,
                         matmul_reps=1)
    ops = r['op_cpu_s_by_kind']
    assert r['op_cpu_s_per_step'] > 0 and all(v >= 0 for v in ops.values())
    # only XLA operations are counted, not the runtime's own events
    assert not any(k[0].isupper() or ' ' in k or k == 'ThunkExecutor' for k in ops), ops
    assert {'ynn_fusion', 'dot_general'} & set(ops), ops
    assert 0 < r['matmul_kernel_share'] <= 1
    m = r['matmuls']
    assert m['count'] == sum(row['count'] for row in m['rows']) > 50
    assert m['xla_alone_s_per_step'] > 0
    # the matmuls read from the step's jaxpr account for the analytic FLOP
    # count of jepa_ecg.training.flops (which counts matmuls only) within 3 %
    assert m['flop_per_step'] == pytest.approx(r['model_flop_per_step'], rel=0.03)
