"""The losses of the joint model: weighted means, the teacher's task losses, distillation losses and the
lambda(step) schedule, and per-group operations (group ids, ranks, sampled candidates)."""
