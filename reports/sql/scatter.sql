-- Selectivity vs consistency: the best-ranked significant neurons, plus deterministic
-- samples of the other significant ones ($keep_sig) and of the rest ($keep).
WITH val AS (
    SELECT DISTINCT layer, neuron FROM ablations
    WHERE model = $model AND concept = $concept AND mode = 'single' AND coalesce(validated, false)
)
SELECT coalesce(lb.label, '') AS label, 'L' || s.layer || '.N' || s.neuron AS name, s.layer, s.neuron,
       round(s.selectivity, 4) AS selectivity, round(s.consistency, 4) AS consistency,
       round(s.importance_pct, 4) AS importance_pct, round(s.score, 4) AS score, s.q_value,
       CASE WHEN val.layer IS NOT NULL THEN 'validated by ablation'
            WHEN (s.significant AND NOT s.lexical) THEN 'significant (q < 0.05)'
            ELSE 'neither' END AS status
FROM scores s
LEFT JOIN val USING (layer, neuron)
LEFT JOIN (SELECT layer, neuron, label FROM labels WHERE model = $model) lb USING (layer, neuron)
WHERE s.model = $model AND s.concept = $concept
  AND CASE WHEN (s.significant AND NOT s.lexical)
           THEN s.rank <= $max_sig OR $keep_sig >= 1.0
                OR (hash(s.layer * 1000003 + s.neuron) % 1000000) < $keep_sig * 1000000
           ELSE $keep >= 1.0 OR (hash(s.layer * 1000003 + s.neuron) % 1000000) < $keep * 1000000
      END;
