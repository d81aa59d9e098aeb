"""Evaluation beside the merge: mIoU and the runners that produce it."""
