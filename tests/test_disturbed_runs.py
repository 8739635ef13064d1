"""Disturbed runs: a busy workdir, a dead run's lock, a full disk, a changed model or recipe.

What a user sees is asserted on real processes and a real filesystem: one
line naming the holder, the path and cause, or the field that changed;
never a traceback; and the checkpoints saved before stay restorable.
"""

import json
import logging
import os
import re
import resource
import signal
import subprocess
import sys

import pytest

from conftest import REPO
from jepa_ecg.models.config import model_config_from
from jepa_ecg.training import checkpoint, config_checks, guard
from jepa_ecg.training import jepa_loop as loop
from test_loop import _batches, _config

# A child that takes a workdir's lock with our code, says so, then waits.
HOLDER = ('import sys, time\n'
          'from jepa_ecg.training import guard\n'
          'with guard.WorkdirLock(sys.argv[1], "pre-training"):\n'
          '    print("locked", flush=True)\n'
          '    time.sleep(600)\n')


def _env():
    return {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(REPO),
            'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}


def _hold(workdir):
    proc = subprocess.Popen([sys.executable, '-c', HOLDER, str(workdir)], env=_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'locked'
    return proc


def _cmd(workdir, data_dir, total_steps, *extra):
    return [sys.executable, '-m', 'experiments.pretrain',
            '--config=experiments/configs/pretrain.py:vit_tiny,synthetic,100hz,smoke',
            f'--config.data.data_dir={data_dir}', f'--config.total_steps={total_steps}',
            '--config.checkpoint_every=2', '--config.log_every=1', '--config.rank_every=0',
            '--config.warmup_steps=2', '--config.data.num_threads=1', f'--workdir={workdir}',
            *extra]


# ----------------------------------------------------------------------------- lock
def test_a_busy_workdir_is_refused_naming_the_holder(tmp_path):
    holder = _hold(tmp_path)
    try:
        with pytest.raises(guard.WorkdirBusyError) as e:
            with guard.WorkdirLock(str(tmp_path), 'pre-training'):
                pass
        assert f'pid {holder.pid}' in str(e.value)
        assert 'in use by another pre-training' in str(e.value)
        assert 'started 20' in str(e.value)
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_dead_run_is_taken_over_with_a_warning(tmp_path, caplog):
    holder = _hold(tmp_path)
    holder.send_signal(signal.SIGKILL)  # dies holding it: the file keeps its record
    holder.wait()
    with caplog.at_level(logging.WARNING):
        with guard.WorkdirLock(str(tmp_path), 'pre-training'):
            with open(tmp_path / guard.LOCK_FILE) as f:
                assert json.load(f)['pid'] == os.getpid()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f'pid {holder.pid}' in w and 'taking over' in w for w in warnings), warnings
    # A clean release leaves nothing to take over.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        with guard.WorkdirLock(str(tmp_path), 'pre-training'):
            pass
    assert not [r for r in caplog.records if 'taking over' in r.getMessage()]


@pytest.mark.slow
def test_a_second_pretraining_in_a_busy_workdir_stops_at_once(tmp_path, synthetic_tfds_dir):
    workdir = tmp_path / 'run'
    holder = _hold(workdir)
    try:
        proc = subprocess.run(_cmd(workdir, synthetic_tfds_dir, 4), env=_env(), cwd=REPO,
                              capture_output=True, text=True, timeout=600)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match(rf'error: {re.escape(str(workdir))} is in use by another pre-training '
                    rf'\(host .+, pid {holder.pid}, started .+\)', last), last
    assert sorted(os.listdir(workdir)) == [guard.LOCK_FILE]


# ----------------------------------------------------------------------------- full disk
def _small_filesystem(path, size):
    path.mkdir()
    try:
        subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
                       check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize('async_save', [True, False])
def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_saved_checkpoints(
        tmp_path, synthetic_tfds_dir, async_save):
    # A real full filesystem (a 1.5 MB tmpfs: a tiny run's checkpoints fill it
    # within a few saves); without the right to mount, a real write limit of
    # the process (the one checkpoint file that grows past it fails).
    small = tmp_path / 'small'
    mounted = _small_filesystem(small, '1500k')

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, 1_500_000))

    try:
        workdir = small / 'run'
        proc = subprocess.run(
            _cmd(workdir, synthetic_tfds_dir, 200, '--config.keep_checkpoints=100',
                 f'--config.async_checkpoint={async_save}'),
            env=_env(), cwd=REPO, capture_output=True, text=True, timeout=900,
            preexec_fn=None if mounted else limit)
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        m = re.fullmatch(
            rf'error: saving the checkpoint of step (\d+) to {re.escape(str(workdir))}/'
            rf'checkpoints failed: (.+)\. The run stopped; the checkpoints saved before '
            rf'\(([\d, ]+)\) are intact: .+', last)
        assert m, proc.stderr[-3000:]
        if mounted:
            assert m.group(2) == 'No space left on device'
        failed, kept = int(m.group(1)), [int(s) for s in m.group(3).split(', ')]
        assert max(kept) < failed < 200
        state, meta = checkpoint.restore_params(str(workdir))
        assert meta['step'] == max(kept) and 'params' in state
    finally:
        if mounted:
            subprocess.run(['umount', str(small)], check=False, timeout=30)


# ----------------------------------------------------------------------------- changed model
def test_the_recorded_model_is_compared_field_by_field(tmp_path):
    recorded = model_config_from(_config(1))
    path = tmp_path / checkpoint.CONFIG_FILE
    config_checks.check_same_model(str(path), recorded)  # a new workdir: nothing to compare
    path.write_text(json.dumps({'model': recorded.to_dict()}))
    config_checks.check_same_model(str(path), recorded)
    c = _config(1)
    c.model.num_registers = 2
    with pytest.raises(config_checks.ConfigError, match=r'model.num_registers=1 but the new '
                                                         r'config has model.num_registers=2'):
        config_checks.check_same_model(str(path), model_config_from(c))


@pytest.mark.slow
def test_a_changed_model_is_refused_before_restoring(tmp_path):
    c = _config(2)
    loop.train_and_evaluate(c, str(tmp_path), input_iterator_fn=_batches(model_config_from(c), 4))
    for field, value, old in (('patch_size', 10, 5), ('variant', 'XS', 'tiny'),
                              ('fs', 500.0, 100.0)):
        c2 = _config(4)
        c2.model[field] = value
        with pytest.raises(config_checks.ConfigError) as e:
            loop.train_and_evaluate(c2, str(tmp_path),
                                    input_iterator_fn=_batches(model_config_from(c2), 4))
        assert (f'holds a run with model.{field}={old!r} but the new config has '
                f'model.{field}={value!r}') in str(e.value)
    # The run itself is untouched and goes on with its own config.
    assert loop.train_and_evaluate(_config(3), str(tmp_path),
                                   input_iterator_fn=_batches(model_config_from(c), 4)
                                   )['step'] == 3


def test_the_recorded_recipe_is_compared_field_by_field(tmp_path):
    recorded = _config(4)
    path = tmp_path / checkpoint.CONFIG_FILE
    config_checks.check_same_recipe(str(path), recorded)  # a new workdir: nothing to compare
    path.write_text(json.dumps({'config': recorded.to_dict()}, default=str))
    config_checks.check_same_recipe(str(path), recorded)  # tuples read back as lists
    same = _config(8)  # lengthened, and logged, saved and computed differently
    same.log_every, same.checkpoint_every, same.model.kernels = 5, 4, 'stock'
    config_checks.check_same_recipe(str(path), same)
    for field, value in (('learning_rate', 6e-4), ('final_ema_momentum', 0.998),
                         ('data.keep_ratio_range', (0.1, 0.15)), ('seed', 1)):
        c = _config(4)
        *parents, leaf = field.split('.')
        (c[parents[0]] if parents else c)[leaf] = value
        old = _config(4)[parents[0]][leaf] if parents else _config(4)[leaf]
        with pytest.raises(config_checks.ConfigError) as e:
            config_checks.check_same_recipe(str(path), c)
        shown = list(value) if isinstance(value, tuple) else value
        assert str(e.value) == (
            f'{tmp_path} holds a run with {field}={list(old) if parents else old!r} but the new '
            f'config has {field}={shown!r}; use the same config to resume or another --workdir '
            f'for a new run')
    # A run recorded before a field existed is not held to it.
    older = recorded.to_dict()
    del older['final_ema_momentum']
    path.write_text(json.dumps({'config': older}, default=str))
    c = _config(4)
    c.final_ema_momentum = 0.998
    config_checks.check_same_recipe(str(path), c)


@pytest.mark.slow
def test_resuming_with_another_recipe_is_refused_and_the_run_goes_on_with_its_own(tmp_path):
    c = _config(2)
    loop.train_and_evaluate(c, str(tmp_path), input_iterator_fn=_batches(model_config_from(c), 4))
    recorded = (tmp_path / checkpoint.CONFIG_FILE).read_text()
    c2 = _config(4)
    c2.learning_rate = 6e-4
    with pytest.raises(config_checks.ConfigError, match=r'holds a run with learning_rate=0.001 '
                                                         r'but the new config has '
                                                         r'learning_rate=0.0006;'):
        loop.train_and_evaluate(c2, str(tmp_path),
                                input_iterator_fn=_batches(model_config_from(c2), 4))
    assert (tmp_path / checkpoint.CONFIG_FILE).read_text() == recorded  # the record kept
    assert loop.train_and_evaluate(_config(4), str(tmp_path),
                                   input_iterator_fn=_batches(model_config_from(c), 4)
                                   )['step'] == 4


# ----------------------------------------------------------------------------- usage
@pytest.mark.slow
def test_usage_errors_and_a_read_only_workdir_are_one_line(tmp_path, synthetic_tfds_dir):
    for extra, expected in (
            (['--config.total_steps=0'], 'error: config.total_steps=0: must be an integer >= 1'),
            (['--config.no_such_field=1'], "error: no such config field: 'no_such_field'")):
        cmd = _cmd(tmp_path / 'run', synthetic_tfds_dir, 4)
        proc = subprocess.run(cmd + extra, env=_env(), cwd=REPO, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = proc.stderr.strip().splitlines()
        assert lines[-2].startswith(expected), proc.stderr[-3000:]
        assert 'experiments/configs/pretrain.py' in lines[-1]
        assert 'Traceback' not in proc.stderr and '--workdir:' not in proc.stderr
        assert not (tmp_path / 'run').exists()
    # A workdir on a read-only filesystem (a real one: root writes through file modes).
    ro = tmp_path / 'ro'
    if not _small_filesystem(ro, '1m'):
        pytest.skip('cannot mount a filesystem here')
    try:
        (ro / 'run').mkdir()
        subprocess.run(['mount', '-o', 'remount,ro', str(ro)], check=True, timeout=30)
        proc = subprocess.run(_cmd(ro / 'run', synthetic_tfds_dir, 4), env=_env(), cwd=REPO,
                              capture_output=True, text=True, timeout=600)
    finally:
        subprocess.run(['umount', str(ro)], check=False, timeout=30)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f'error: cannot write {ro}/run/{guard.LOCK_FILE}: Read-only file system')


# ----------------------------------------------------------------------------- damaged data
def _damaged_copy(data_dir, dest, split):
    """A copy of a built dataset (hard links) whose `split` shard has bytes flipped mid-file."""
    import glob  # pylint: disable=g-import-not-at-top
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.copytree(data_dir, dest, copy_function=os.link)
    path = glob.glob(os.path.join(dest, '**', f'*-{split}.array_record-*'), recursive=True)[0]
    shutil.copyfile(path, path + '.tmp')  # its own bytes, not the original's
    os.replace(path + '.tmp', path)
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
        f.seek(size // 2)
        data = f.read(64)
        f.seek(size // 2)
        f.write(bytes((b + 0x5A) % 256 for b in data))
    return path


def test_a_damaged_dataset_file_names_the_file_and_the_rebuild_command(
        tmp_path, synthetic_tfds_dir):
    from jepa_ecg.data import datasets  # pylint: disable=g-import-not-at-top
    damaged = _damaged_copy(synthetic_tfds_dir, tmp_path / 'tfds', 'test')
    reader = datasets.open_source('synthetic', str(tmp_path / 'tfds'), split='test')
    with pytest.raises(datasets.DatasetReadError) as e:
        for i in range(len(reader)):
            reader[i]
    assert str(e.value).startswith(f"dataset 'synthetic_ecg' in {tmp_path / 'tfds'}: "
                                   f'{damaged} is damaged (')
    assert str(e.value).endswith(
        f'rebuild it with python -m tfds_builders synthetic_ecg --data_dir={tmp_path / "tfds"} '
        f'--overwrite')


@pytest.mark.slow
def test_pretraining_on_a_damaged_dataset_is_one_line(tmp_path, synthetic_tfds_dir):
    damaged = _damaged_copy(synthetic_tfds_dir, tmp_path / 'tfds', 'train')
    proc = subprocess.run(_cmd(tmp_path / 'run', tmp_path / 'tfds', 200), env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: dataset 'synthetic_ecg' in {tmp_path / 'tfds'}: {damaged} "
                           f'is damaged'), last
    assert 'python -m tfds_builders synthetic_ecg' in last


# ----------------------------------------------------------------------------- fine-tuning
def test_sigterm_stops_a_finetuning_run_at_the_step_boundary(tmp_path):
    from jepa_ecg.training import finetune_runs  # pylint: disable=g-import-not-at-top
    # pylint: disable-next=g-import-not-at-top
    from test_evaluation_protocols import _config as ft_config, _source, _synthetic_task
    config = ft_config('linear,smoke', total_steps=50, eval_every=4)
    with guard.StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal: the handler only takes note
        assert stop.received == signal.SIGTERM
        with pytest.raises(guard.StopRequested) as e:
            finetune_runs.train_and_evaluate(config, str(tmp_path / 'run'), encoder=_source(),
                                             task='superdiagnostic',
                                             task_data=_synthetic_task(flip_eval=False),
                                             stop=stop)
    assert e.value.step == 1 and e.value.exitcode == 128 + signal.SIGTERM
    assert str(e.value) == (f'stopped by SIGTERM at step 1 of {tmp_path / "run"}: this run '
                            f'does not resume; run the same command to start it again')
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_a_ctrl_c_ignored_at_start_stays_ignored_and_sigterm_still_stops():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a shell's background job
    try:
        with guard.StopSignals() as stop:
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.received is None
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.received == signal.SIGTERM
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_signal_pending_at_an_evaluation_pass_stops_it_before_its_first_batch(tmp_path):
    from jepa_ecg.training import finetune_loop  # pylint: disable=g-import-not-at-top
    # pylint: disable-next=g-import-not-at-top
    from test_evaluation_protocols import _config as ft_config, _source, _synthetic_task
    config = ft_config('linear,smoke', total_steps=50, eval_every=4)
    run = finetune_loop.build_run(config, _synthetic_task(flip_eval=False), _source(), seed=0)
    workdir = str(tmp_path / 'run')
    with guard.StopSignals() as stop:
        scores = finetune_loop.evaluate_or_stop(run, run.state.params, 'val', stop, 4, workdir)
        assert 0.0 <= scores.macro_auc <= 1.0
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(guard.StopRequested) as e:
            finetune_loop.evaluate_or_stop(run, run.state.params, 'test', stop, 4, workdir)
    assert e.value.step == 4 and e.value.exitcode == 128 + signal.SIGTERM
    assert str(e.value) == (f'stopped by SIGTERM at step 4 of {workdir}: this run does not '
                            f'resume; run the same command to start it again')


def test_a_signal_during_lead_subset_scoring_stops_the_finetuning_run(tmp_path):
    from jepa_ecg.evaluation import lead_subsets  # pylint: disable=g-import-not-at-top
    from jepa_ecg.training import finetune_loop  # pylint: disable=g-import-not-at-top
    # pylint: disable-next=g-import-not-at-top
    from test_evaluation_protocols import _config as ft_config, _source, _synthetic_task
    config = ft_config('linear,smoke', total_steps=50, eval_every=4)
    run = finetune_loop.build_run(config, _synthetic_task(flip_eval=False), _source(), seed=0)
    workdir = str(tmp_path / 'run')
    with guard.StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(guard.StopRequested) as e:
            with finetune_loop.stop_between_batches(stop, 8, workdir) as interrupted:
                lead_subsets.evaluate_lead_subsets(run.evaluator, run.state.params, 'I+II,I',
                                                   num_resamples=5, confidence=0.9, seed=0,
                                                   interrupted=interrupted)
    assert e.value.step == 8 and e.value.exitcode == 128 + signal.SIGTERM
    assert str(e.value) == (f'stopped by SIGTERM at step 8 of {workdir}: this run does not '
                            f'resume; run the same command to start it again')
