"""PTB-XL evaluation: fine-tuning input, protocols, metrics with bootstrap CIs, plots.

    from jepa_ecg.evaluation import data, metrics, protocols
"""
