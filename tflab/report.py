"""The run-lab report as text for a person (the --json document is the report itself)."""

from __future__ import annotations


def render(report: dict) -> str:
    """A readable summary of a run-lab report."""
    b, t, s = report["basics"], report["training"], report["server"]
    host = report["host"]
    lines = [f"tflab lab report ({host['name']})", ""]
    if host.get("workdir"):
        gpus = host.get("gpus_nvidia_smi") or []
        lines += [f"Host: {host.get('address')}, {host['workdir']}, Python {host.get('python')}",
                  f"  GPUs (nvidia-smi): {'; '.join(gpus) if gpus else 'none'}; "
                  f"TensorFlow sees: {', '.join(host.get('gpus_tensorflow') or []) or 'none'}",
                  f"  serving: {host.get('serving')}; bootstrap {host.get('bootstrap_seconds', 0):.1f} s", ""]
    lines += [
             "Basics: graphs and sessions (tf.compat.v1)",
             f"  operations   {', '.join(b['operations'])}",
             f"  add          {b['add']}",
             f"  matmul       {b['matmul']}",
             f"  variable     {b['variable']}   (the vector after 4 multiplications by a matrix of ones)",
             "",
             f"Training: single neuron, {t['steps']} steps, learning rate {t['learning_rate']:g}, "
             f"{t['num_examples']} points, seed {t['seed']}",
             f"  {'':12} {'trained':>10} {'least squares':>14} {'noise-free':>11}",
             f"  {'slope':12} {t['slope']:>10.4f} {t['ols_slope']:>14.4f} {t['noise_free_slope']:>11g}",
             f"  {'intercept':12} {t['intercept']:>10.4f} {t['ols_intercept']:>14.4f} {t['noise_free_intercept']:>11g}",
             f"  {'final loss':12} {t['final_loss']:>10.4f}",
             "",
             f"Predictions over gRPC: model {s['model_name']} version {s['version']}, "
             f"{s['kind']} at {s['address']}",
             f"  {'x':>6} {'predicted':>10} {'noise-free':>11}"]
    lines += [f"  {p['x']:>6g} {p['predicted']:>10.4f} {p['noise_free']:>11g}" for p in report["predictions"]]
    a = report["artifacts"]
    lines += ["", f"TensorBoard  {report['tensorboard']['url']}"]
    if report.get("jupyter"):
        lines.append(f"Jupyter      {report['jupyter']['url']}   ({len(report['jupyter']['notebooks'])} notebooks)")
    lines += [
              f"Plot         {a['plot']}",
              f"Logs         {a['logdir']}",
              f"SavedModel   {a['saved_model']}"]
    if report.get("timings"):
        lines += ["", "Timings (s): " + ", ".join(f"{k.replace('_', ' ')} {v:.1f}"
                                                         for k, v in report["timings"].items())]
    return "\n".join(lines)
