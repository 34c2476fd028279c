from .consistency_guidance import ConsistencyGuidanceScheduler, consistency_step_indices, guide_with_consistency

__all__ = ["ConsistencyGuidanceScheduler", "consistency_step_indices", "guide_with_consistency"]
