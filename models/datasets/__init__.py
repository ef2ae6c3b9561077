"""Public e-commerce datasets: importers into the input event schema, and the evaluation tasks.

``importers`` reads the formats of ``../shared/data`` (Taobao, CDNOW, YooChoose, Diginetica,
JSON lines) into raw events; ``tasks`` defines the purchase-intent, churn and latent-need labels
and their metrics. Both are pure: no Kafka, no Faust.
"""
