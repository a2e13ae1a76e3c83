-- The top-ranked significant neurons of one model x concept, with their label and ablation evidence.
WITH s AS (
    SELECT * FROM scores
    WHERE model = $model AND concept = $concept AND (significant AND NOT lexical)
    ORDER BY rank NULLS LAST, score DESC
    LIMIT $k
), ab AS (
    SELECT layer, neuron, max(z) FILTER (WHERE isfinite(z)) AS best_z,
           bool_or(coalesce(validated, false)) AS validated, any_value(metric) AS metric,
           max(specificity) FILTER (WHERE coalesce(validated, false)) AS specificity
    FROM ablations
    WHERE model = $model AND concept = $concept AND mode = 'single'
    GROUP BY ALL
), lb AS (
    SELECT layer, neuron, family, label, top_tokens, polysemantic, explanation_score
    FROM labels WHERE model = $model
)
SELECT s.layer, s.neuron, 'L' || s.layer || '.N' || s.neuron AS name, s.n_layers, s.depth,
       s.selectivity, s.auc, s.cohens_d, s.mean_pos, s.mean_neg, s.std_pos, s.std_neg,
       s.p_value, s.q_value, s.consistency, s.importance, s.importance_pct, s.score, s.rank,
       s.range_lo, s.range_hi, s.range_overlap, s.n_units, s.selectivity_test, s.p_test,
       coalesce(s.replicated, false) AS replicated, s.rank_probeless, s.rank_probe,
       ab.best_z, coalesce(ab.validated, false) AS validated, ab.metric AS ablation_metric,
       lb.family, lb.label, lb.top_tokens, lb.polysemantic, lb.explanation_score
FROM s
LEFT JOIN ab USING (layer, neuron)
LEFT JOIN lb USING (layer, neuron)
ORDER BY s.rank NULLS LAST, s.score DESC;
