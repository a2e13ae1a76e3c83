-- Consistency by group: the share of each group's concept (train) examples above the
-- 95th percentile of the non-concept examples. Examples without a group (the loader names
-- each one `auto-<hash>`) are one bar, not one bar per example.
WITH v AS (
    SELECT * FROM neuron_values WHERE coalesce(split, 'train') = 'train' AND v IS NOT NULL
), p AS (
    SELECT layer, neuron, quantile_cont(v, 0.95) FILTER (WHERE label = 0) AS p95
    FROM v GROUP BY ALL
)
SELECT v.layer, v.neuron,
       CASE WHEN v.grp IS NULL OR v.grp LIKE 'auto-%' THEN '(ungrouped examples)' ELSE v.grp END AS grp,
       count(*) AS n_pos,
       avg(CASE WHEN v.v > p.p95 THEN 1.0 ELSE 0.0 END) AS share
FROM v JOIN p USING (layer, neuron)
WHERE v.label = 1
GROUP BY ALL
ORDER BY v.layer, v.neuron, grp;
