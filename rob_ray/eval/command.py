"""`python experiments/run.py eval --checkpoint RUN_OR_FILE --data DIR [--protocol knn,linear,lowshot]`.

Evaluates a run's student (and optionally its untrained self, its teacher, any timm model) on a
labelled ImageFolder (transfer: any such folder) and writes eval.json, eval.md and PNG plots into
the run folder (`<run>/eval/`). User errors: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["eval_main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="experiments/run.py eval", description="evaluate frozen features of a run")
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoint folder or state.pt")
    p.add_argument("--data", required=True, help="labelled ImageFolder with train/ (memory bank, fit) and val/")
    p.add_argument("--protocol", default="knn,linear,lowshot", help="comma list of knn, linear, lowshot")
    p.add_argument("--models", default="student", help="comma list of student, untrained, teacher, timm:ARCH")
    p.add_argument("--engine", default="ray", choices=["ray", "local"], help="ray: Ray Data actors; local: one process")
    p.add_argument("--size", type=int, default=None, help="eval crop side (default: the run's augment.global_size)")
    p.add_argument("--feature", default="auto", help="auto | pooled | cls | last4_cls (ViT)")
    p.add_argument("--k", default="10,20,100,200", help="k-NN neighbour counts")
    p.add_argument("--max-images", type=int, default=None, help="use at most N images per split (even spread)")
    p.add_argument("--linear-epochs", type=int, default=100)
    p.add_argument("--draws", type=int, default=3, help="seeded low-shot draws per setting")
    p.add_argument("--num-actors", type=int, default=1)
    p.add_argument("--out", default=None, help="output folder (default: <run>/eval, <run>/eval_<student>)")
    p.add_argument("--student", default=None, help="a multi-student run: which student (default: the first)")
    return p


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def eval_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from rob_ray.errors import EXIT_USER_ERROR, EvalInputError, RobRayError, first_line
    from rob_ray.eval.runner import evaluate

    try:
        try:
            ks = [int(k) for k in _csv(args.k)]
        except ValueError:
            raise EvalInputError(f"--k '{args.k}' must be a comma list of integers (e.g. 10,20,100,200)") from None
        results = evaluate(args.checkpoint, args.data, protocols=_csv(args.protocol), models=_csv(args.models),
                           engine=args.engine, size=args.size, feature=args.feature, ks=ks,
                           max_images=args.max_images, linear_kwargs={"epochs": args.linear_epochs},
                           lowshot_kwargs={"num_draws": args.draws}, num_actors=args.num_actors, out_dir=args.out,
                           student=args.student)
    # Only errors about the user's input: any other exception is a bug and keeps its traceback.
    except RobRayError as exc:
        print(f"eval error: {first_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(results["table"])
    print(f"[rob_ray] eval.json, eval.md and plots written to {results['out_dir']} in {results['seconds']:.0f}s")
    return 0
