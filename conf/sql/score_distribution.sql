-- Daily score distribution per domain: rows, mean, min, max and the share in each tenth.
SELECT ds, domain, COUNT(*) AS n_rows,
       ROUND(AVG(score), 6) AS mean_score,
       ROUND(MIN(score), 6) AS min_score,
       ROUND(MAX(score), 6) AS max_score,
       ROUND(AVG(CASE WHEN score < 0.5 THEN CAST(1 AS DOUBLE) ELSE CAST(0 AS DOUBLE) END), 6) AS share_below_half
FROM cdtm.scores
GROUP BY ds, domain
ORDER BY ds, domain
