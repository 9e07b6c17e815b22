"""Network definitions of the built-in pipelines, one module per family.

The pipelines (:mod:`ai_models.pipelines`) and the training scripts
(:mod:`ai_models.training`) build their networks from here.
"""
