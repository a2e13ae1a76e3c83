-- description: Range versus whole-neuron ablation ("Neurons Speak in Ranges"): for each model x concept with validated neurons, the top set's target drop and off-target drop under zero, mean and range side by side (the largest cumulative set each method measured), with the confidence they are measured on.
-- param: model VARCHAR = NULL
-- param: concept VARCHAR = NULL
WITH cells AS (
    SELECT DISTINCT model, concept FROM ablations
    WHERE mode = 'single' AND coalesce(validated, false)
),
full_set AS (
    SELECT a.model, a.concept, a.method, a.k, a.metric, a.drop, a.off_target_drop, a.specificity,
           coalesce(a.validated, false) AS validated
    FROM ablations AS a JOIN cells USING (model, concept)
    WHERE a.mode = 'cumulative'
    QUALIFY a.k = max(a.k) OVER (PARTITION BY a.model, a.concept, a.method)
)
SELECT model, concept, any_value(k) AS k, any_value(metric) AS metric,
       any_value(drop) FILTER (WHERE method = 'zero') AS zero_drop,
       any_value(off_target_drop) FILTER (WHERE method = 'zero') AS zero_off_target,
       any_value(drop) FILTER (WHERE method = 'mean') AS mean_drop,
       any_value(off_target_drop) FILTER (WHERE method = 'mean') AS mean_off_target,
       any_value(drop) FILTER (WHERE method = 'range') AS range_drop,
       any_value(off_target_drop) FILTER (WHERE method = 'range') AS range_off_target,
       any_value(specificity) FILTER (WHERE method = 'zero') AS zero_specificity,
       any_value(specificity) FILTER (WHERE method = 'mean') AS mean_specificity,
       any_value(specificity) FILTER (WHERE method = 'range') AS range_specificity
FROM full_set
WHERE ($model IS NULL OR model = $model)
  AND ($concept IS NULL OR concept = $concept)
GROUP BY model, concept
ORDER BY model, concept
