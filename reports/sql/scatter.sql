-- Selectivity vs consistency: every significant neuron, plus a deterministic sample of the rest.
WITH val AS (
    SELECT DISTINCT layer, neuron FROM ablations
    WHERE model = $model AND concept = $concept AND mode = 'single' AND z >= $z_min
)
SELECT coalesce(lb.label, '') AS label, 'L' || s.layer || '.N' || s.neuron AS name, s.layer, s.neuron, s.selectivity,
       s.consistency, s.importance_pct, s.score, s.q_value,
       CASE WHEN val.layer IS NOT NULL THEN 'validated (z ≥ 3)'
            WHEN s.q_value < $alpha THEN 'significant (q < 0.05)'
            ELSE 'neither' END AS status
FROM scores s
LEFT JOIN val USING (layer, neuron)
LEFT JOIN (SELECT layer, neuron, label FROM labels WHERE model = $model) lb USING (layer, neuron)
WHERE s.model = $model AND s.concept = $concept
  AND (s.q_value < $alpha OR $keep >= 1.0
       OR (hash(s.layer * 1000003 + s.neuron) % 1000000) < $keep * 1000000);
