"""The pyspark.ml API: Params, the estimator, the model, the evaluator, the balancer."""
