-- description: One row per model × concept (lexical controls are columns, not rows): neurons significant for the concept and not lexical, opposite-direction, significant on the concept's lexical control, flagged lexical, replicated on held-out groups; the ablated top singles and how many are validated under `method`; and the whole top-k set's drop against its random sets.
-- param: model VARCHAR = NULL
-- param: method VARCHAR = 'zero'
WITH s AS (
    SELECT model, concept,
           count(*) FILTER (WHERE significant AND NOT lexical) AS n_significant,
           count(*) FILTER (WHERE opposite) AS n_opposite,
           count(*) FILTER (WHERE significant AND lexical) AS n_lexical,
           count(*) FILTER (WHERE replicated) AS n_replicated
    FROM scores
    WHERE NOT ends_with(concept, '+control')
    GROUP BY model, concept
),
ctrl AS (
    SELECT model, left(concept, length(concept) - length('+control')) AS concept,
           count(*) FILTER (WHERE significant) AS n_control
    FROM scores
    WHERE ends_with(concept, '+control')
    GROUP BY model, concept
),
single AS (
    SELECT model, concept,
           count(DISTINCT (layer, neuron)) AS n_ablated,
           count(DISTINCT (layer, neuron)) FILTER (WHERE coalesce(validated, false)) AS n_validated
    FROM ablations
    WHERE mode = 'single' AND method = $method
    GROUP BY model, concept
),
top AS (
    SELECT model, concept, k AS top_k, metric, drop AS top_drop, random_drop_mean AS top_random_drop,
           p_value AS top_p, specificity AS top_specificity, coalesce(validated, false) AS top_validated
    FROM ablations
    WHERE mode = 'cumulative' AND method = $method
    QUALIFY row_number() OVER (PARTITION BY model, concept ORDER BY k DESC) = 1
)
SELECT s.model, s.concept, s.n_significant, s.n_opposite, coalesce(ctrl.n_control, 0) AS n_control,
       s.n_lexical, s.n_replicated,
       coalesce(single.n_ablated, 0) AS n_ablated, coalesce(single.n_validated, 0) AS n_validated,
       top.top_k, top.metric, top.top_drop, top.top_random_drop, top.top_p, top.top_specificity,
       top.top_validated
FROM s
LEFT JOIN ctrl USING (model, concept)
LEFT JOIN single USING (model, concept)
LEFT JOIN top USING (model, concept)
WHERE ($model IS NULL OR s.model = $model)
ORDER BY s.model, s.concept
