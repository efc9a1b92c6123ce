"""The lab: training data synthesis, recipes and the training loop of the RAW-domain core.

Imports flow from here into the product (``rawrestore.models``, ``rawrestore.isp``...), never back.
"""
