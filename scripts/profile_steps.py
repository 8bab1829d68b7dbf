"""Where the time of one LoT training step goes: torch.profiler tables of a student step and a PPO minibatch.

At the paper's Atari settings (Nature CNN, minibatches of 256 frames, channels-last), for fp32 and bf16
autocast, this profiles

- one student step of the student phase: the students' forward, the KL to the teacher's targets, backward,
  per-student gradient clipping and Adam (weight decay);
- one PPO minibatch with LoT: the teacher's PPO loss plus the teachability penalty, the students' imitation on
  the same states, one backward, both networks clipped and stepped;

each in two forms side by side: ``before``, the implementation before issue 15 (PyTorch's default CPU Adam,
frames scaled in fp32 and cast to bf16 by autocast at the first convolution: ``benchmark_throughput.py``'s
``before_issue_15``) and ``after``, lot_rl's (``lot_rl.runtime.adam``'s fused Adam, frames scaled straight to
autocast's dtype, the trunks' last ReLU after Flatten). It prints, per form, the operators that took the most
time and the median seconds per step over ``--repeats`` steps. ``--relu-order`` instead times lot_rl's steps
beside the same with the last ReLU before Flatten (CleanRL's order; the one change alone), interleaved.

    python scripts/profile_steps.py                       # fp32 and bf16, 1 student, one thread
    python scripts/profile_steps.py --precision bf16 --rows 12 --threads 2
    python scripts/profile_steps.py --compile --repeats 15   # eager beside torch.compile, times only
    python scripts/profile_steps.py --relu-order --repeats 15  # ReLU after / before Flatten, times only
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

import lot_rl.agents.ppo_lot_atari as agent_module
from lot_rl.agents.ppo_lot_atari import Agent, Args, lot_ppo_loss, lr_factor, make_students
from lot_rl.runtime import autocast_for, cpu_has_bf16_kernels, keep_freed_memory

# scripts/ is on the path of a script run from it
from benchmark_throughput import before_issue_15, relu_before_flatten_trunks  # noqa: E402


def steps(precision: str, num_students: int, batch: int = 256, compiled: bool = False):
    """(student step, PPO minibatch step) closures on fresh networks, at the paper's settings; ``compiled``: the
    networks' forwards through ``torch.compile`` (inductor: fused element-wise kernels around oneDNN's convolutions)."""
    torch.manual_seed(0)
    args = Args(precision=precision, num_students=num_students)
    device = torch.device("cpu")
    agent = Agent(4).to(memory_format=torch.channels_last)
    optimizer = agent_module.adam(agent.parameters(), lr=args.learning_rate, eps=args.adam_eps)
    students = make_students(args, 4, device, lr_factor(args))
    if compiled:
        for network in [agent, *students.networks]:
            network.forward = torch.compile(network.forward)
    autocast = autocast_for(device, precision)
    obs = torch.randint(0, 256, (batch, 4, 84, 84), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    actions, zeros, advantages = torch.randint(0, 4, (batch,)), torch.zeros(batch), torch.randn(batch)
    with torch.inference_mode(), autocast():
        targets = agent.policy_logits(obs).float()

    def student_step():
        students.imitate(obs, targets, autocast=autocast)

    def ppo_minibatch():
        loss, _ = lot_ppo_loss(agent, students, obs, actions, zeros, advantages, zeros, zeros, args,
                               alpha_now=args.alpha, autocast=autocast)
        optimizer.zero_grad(set_to_none=True)
        students.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
        optimizer.step()
        students.step()

    return {"student step": student_step, "PPO minibatch": ppo_minibatch}


def cpu_seconds(work, repeats: int) -> tuple[float, float]:
    """(best, median) seconds of the calling thread's CPU time per call: with one torch thread, steady on a busy
    machine, where wall-clock time counts the other jobs' turns too."""
    return interleaved_cpu_seconds({"work": work}, repeats)["work"]


def interleaved_cpu_seconds(works: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """:func:`cpu_seconds` of several works, their calls taken in turn so that a busy machine's slow spells fall on
    all of them alike."""
    for work in works.values():
        work()  # warm-up: oneDNN primitives, allocator
    times = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            start = time.thread_time()
            work()
            times[name].append(time.thread_time() - start)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", nargs="*", default=None, choices=["fp32", "bf16"],
                        help="default: fp32, and bf16 where this CPU has bf16 kernels")
    parser.add_argument("--num-students", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU times are the calling thread's: "
                                                               "keep 1 to count all the work)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=8, help="operators listed per profile")
    parser.add_argument("--compile", action="store_true",
                        help="instead of before/after: lot_rl's steps eager beside the same with the networks' forwards "
                             "through torch.compile (needs a C++ compiler; compiling takes minutes), times only")
    parser.add_argument("--relu-order", action="store_true",
                        help="instead of before/after: lot_rl's steps beside the same with the trunks' last ReLU before "
                             "Flatten, times only, the two forms' steps interleaved")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    keep_freed_memory()
    precisions = opts.precision or ["fp32"] + (["bf16"] if cpu_has_bf16_kernels() else [])
    if opts.compile:
        for precision in precisions:
            for form in ("eager", "torch.compile"):
                for name, work in steps(precision, opts.num_students, compiled=form != "eager").items():
                    best, median = cpu_seconds(work, opts.repeats)
                    print(f"{name}, {precision}, {form}: {best * 1000:.1f} ms of CPU time (best of {opts.repeats}; "
                          f"median {median * 1000:.1f} ms)", flush=True)
        return
    if opts.relu_order:
        for precision in precisions:
            forms = {"ReLU after Flatten (lot_rl)": steps(precision, opts.num_students)}
            with relu_before_flatten_trunks():
                forms["ReLU before Flatten"] = steps(precision, opts.num_students)
            for name in ("student step", "PPO minibatch"):
                times = interleaved_cpu_seconds({form: work[name] for form, work in forms.items()}, opts.repeats)
                (best_a, med_a), (best_b, med_b) = times.values()
                for form, (best, median) in times.items():
                    print(f"{name}, {precision}, {form}: {best * 1000:.1f} ms of CPU time (best of {opts.repeats}; "
                          f"median {median * 1000:.1f} ms)")
                print(f"{name}, {precision}: ReLU after Flatten at {best_b / best_a:.2f}x the speed (best), "
                      f"{med_b / med_a:.2f}x (median)", flush=True)
        return
    for precision in precisions:
        for form in ("before", "after"):
            with before_issue_15() if form == "before" else contextlib.nullcontext():
                for name, work in steps(precision, opts.num_students).items():
                    best, median = cpu_seconds(work, opts.repeats)
                    with profile(activities=[ProfilerActivity.CPU]) as prof:
                        work()
                    print(f"\n## {name}, {precision}, {form}: {best * 1000:.1f} ms of CPU time (best of "
                          f"{opts.repeats}; median {median * 1000:.1f} ms)")
                    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=opts.rows,
                                                    max_name_column_width=40))


if __name__ == "__main__":
    main()
