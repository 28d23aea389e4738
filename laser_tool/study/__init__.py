"""Studies: plans (the seed's grids, frontiers), their steps, the resumable study run and its report."""
from .grids import GRIDS, matched_selectors
from .plan import default_seeds, plan
from .report import write_report
from .run import StudyRequest, run_study, study_status
from .steps import HEAL_LR_FACTOR, Step, train_config

__all__ = ["GRIDS", "matched_selectors", "default_seeds", "plan", "write_report", "StudyRequest", "run_study", "study_status",
           "HEAL_LR_FACTOR", "Step", "train_config"]
