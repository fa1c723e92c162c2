"""Everything checked before Ray starts (one package): the data lists, the teacher loads, the method's
needs are met (`rob_ray.methods.needs`, named by its registry entry), teacher and student fit each
other (head width, patch sizes, normalisation, feature widths) and one worker's GPU (memory estimate)."""

from rob_ray.checks.compat import CompatReport, check_compatibility, summary
from rob_ray.checks.preflight import Preflight, check_teacher_fits, estimate_worker_memory, preflight

__all__ = ["CompatReport", "Preflight", "check_compatibility", "check_teacher_fits", "estimate_worker_memory",
           "preflight", "summary"]
