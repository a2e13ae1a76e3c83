-- Two models side by side: the share of significant neurons per relative-depth bin per concept.
SELECT model, concept,
       least(CAST(floor(depth * $bins) AS INTEGER), $bins - 1) AS bin,
       count(*) AS n_scored,
       count(*) FILTER (WHERE (significant AND NOT lexical)) AS n_sig,
       avg(CASE WHEN (significant AND NOT lexical) THEN 1.0 ELSE 0.0 END) AS share
FROM scores
WHERE model IN ($model_a, $model_b) AND concept NOT LIKE '%+control'   -- lexical controls are not concepts
GROUP BY ALL
ORDER BY concept, model, bin;
