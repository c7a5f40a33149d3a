"""Stages 1–3: the filters that choose training data (filters), the nnU-Net training sets they define
(training_set), the nnU-Net driver (nnunet, trainers) and the stage runner (stages). docs/method.md §5.
"""
