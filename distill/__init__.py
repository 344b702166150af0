"""Step segmentation, hindsight contexts, teacher rescoring and advantage-shaping math."""
