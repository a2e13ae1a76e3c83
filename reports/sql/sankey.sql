-- Concept -> layer -> concept family, counted over the significant neurons of one model
-- (not over lexical controls, `<concept>+control`).
-- Families beyond the $max_families largest are drawn as one "other families" band, so a
-- model with hundreds of small families still gives a readable (and light) diagram.
WITH flows AS (
    SELECT s.concept, s.layer, coalesce(l.family, 'unlabelled') AS family, count(*) AS n
    FROM scores s
    LEFT JOIN labels l ON l.model = s.model AND l.layer = s.layer AND l.neuron = s.neuron
    WHERE s.model = $model AND (s.significant AND NOT s.lexical) AND s.concept NOT LIKE '%+control'
    GROUP BY ALL
), top AS (
    SELECT family FROM flows GROUP BY family ORDER BY sum(n) DESC, family LIMIT $max_families
)
SELECT f.concept, f.layer,
       CASE WHEN t.family IS NULL THEN 'other families' ELSE f.family END AS family,
       sum(f.n)::BIGINT AS n
FROM flows f LEFT JOIN top t USING (family)
GROUP BY ALL
ORDER BY f.concept, f.layer, family;
