"""Adaptive speculation: choose K per step (K = 0: a plain step) to maximise expected tokens/s.

Why each rule exists, with the measurements, is in docs/batch-tradeoffs.md ("How `auto` decides").
Expected tokens per row and step, for K candidates:
    E(K) = 1 + sum_{j < K} avail_j * prod_{i <= j} a_i
a_i: moving-average acceptance of position i given the ones before were accepted (positions seen
fewer than `min_samples` times take the pooled acceptance of positions 1..); avail_j: the share of
rows that had a j-th candidate. Step cost t(B, K) per batch-size bucket: a plain step's own, a
line in K for K >= 1, each plus the step's untimed overhead; a draft's catching up after plain
steps is a switching cost, charged to exploring. Choice: argmax_K E(K) / t(B, K), K > 0 only past
a margin (5% at batch 1, 12% at 2, to 20% at 32), and only where the tokens per row-second that
speculative steps really gave (realized rates) beat plain by that margin too.

Exploring is paid from a bank: plain steps bank `regret` of their tokens; a trial of the best K
runs when the bank covers its predicted loss (catch-up included), and is then debited what it
really cost. A trial that could not change the verdict even with `hope` of the rejections away
costs `hopeless` times as much. A new bucket starts with plain steps, then anchors its cost line
with K = k_max / 2; a larger bucket inherits a smaller one's measured "no".

Lockstep (decoding/lockstep.py): in a batch with groups of rows that plain decoding would finish
together, steps are clipped per group, priced as (avail_j * a_0 ... a_j) ** g for a group of g.
Ending a lockstep (an unclipped step) must promise `lock_margin` more per doubling of the batch,
and from groups of three up in bucket 4+ (batch 3+) needs a measured unclipped gain: it is for good.

Moving averages weigh an outcome by its rows (`alpha` each, at most `max_weight` a step), and more
after a run without updates (`forget`: at batch 1 the acceptance is the current request's); a new
request alone in its batch restarts the acceptance estimates from their average across requests.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from specserve.decoding import lockstep
from specserve.decoding.averages import RateAverage, RequestPrior
from specserve.decoding.stats import StepStats
from specserve.decoding.step_cost import StepCosts


def bucket(batch_size: int) -> int:
    """Batch sizes grouped by powers of two: 1, 2, 3-4, 5-8, ..."""
    return 1 << max(batch_size - 1, 0).bit_length()


@dataclass
class KController:
    k_max: int
    alpha: float = 0.02  # weight of one row's acceptance outcome in the moving averages ...
    max_weight: float = 0.2  # ... and the most one step's outcome may weigh
    margin: float = 0.1  # base of what K > 0 must promise over a plain step (_margin: 12% at 2)
    margin_1: float = 0.05  # ... and at batch 1, where there is nothing to desynchronise, this
    lock_margin: float = 0.1  # per doubling of the batch: see _lock_margin
    regret: float = 0.01  # share of a plain run's tokens that exploring may cost
    hope: float = 0.75  # a trial is hopeful if speculation would win were this share of rejections
    hopeless: float = 10.0  # away; a hopeless one costs this many times its expected loss
    recheck_every: int = 16  # while speculating: steps between re-measuring K = 0 or a neighbour
    min_samples: int = 4  # updates before a position's own acceptance replaces the pooled one
    min_rows: int = 32  # speculative row-steps before realized rates may veto the model
    anchor_rows: int = 8  # a new bucket's anchor K runs until position 0 has seen this many rows
    anchor_steps: int = 8  # ... or for at most this many steps
    accept: list[float] = field(default_factory=list)  # [k_max] conditional acceptance per position
    samples: list[int] = field(default_factory=list)  # [k_max] updates of each position's average
    rows_seen: dict[str, float] = field(default_factory=dict)  # row outcomes per average so far
    forget: float = 0.005  # per step without an update: how fast a measurement stales (requests
    # change; after a plain run, a trial's outcome weighs up to `max_weight`)
    updated: dict[str, int] = field(default_factory=dict)  # step of each average's last update
    prior: RequestPrior = field(default_factory=RequestPrior)  # acceptance across requests (batch 1)
    request: object = None  # the request last seen alone in its batch
    tail: float = 0.8  # pooled conditional acceptance of positions 1..
    avail: list[float] = field(default_factory=list)  # [k_max] share of rows with a j-th candidate
    costs: StepCosts = field(default_factory=StepCosts)  # seconds per step by (bucket, K)
    realized: dict[tuple[int, bool | str], RateAverage] = field(default_factory=dict)  # (bucket, K > 0
    # or "lock" for clipped speculation) -> tokens per row-second the steps gave (the model's check)
    sync: float = 0.0  # moving average of a switch's catch-up seconds (plain -> speculative)
    credit: dict[int, float] = field(default_factory=dict)  # bucket -> tokens banked for exploring
    trial: tuple[int, float, float] | None = None  # the step just chosen is a budgeted trial:
    # (bucket, its cost factor, its predicted loss); `observe` debits what it really cost
    switched: bool = False  # the step just chosen speculates after a plain one (the draft catches up)
    steps: int = 0
    last: int = 0
    sizes: dict[int, int] | None = None  # this step's lockstep groups: {size: rows} (None: no groups)

    def __post_init__(self) -> None:
        self.accept = self.accept or [0.5] * self.k_max  # a neutral prior until measured
        self.avail = self.avail or [1.0] * self.k_max
        self.samples = self.samples or [0] * self.k_max

    def acceptance(self, j: int) -> float:
        """Position j's conditional acceptance: its own average once measured enough, else pooled."""
        if j == 0 or self.samples[j] >= self.min_samples:
            return self.accept[j]
        return self.tail

    def expected_tokens(
        self, k: int, sizes: list[int] | dict[int, int] | None = None, hope: float = 0.0
    ) -> float:
        """Per row and step; with lockstep group sizes ([B]), each group advances as one.
        hope: the share of rejections assumed away (an optimistic estimate for exploring)."""
        reach, p = [], 1.0
        for j in range(k):
            p *= 1.0 - (1.0 - self.acceptance(j)) * (1.0 - hope)
            reach.append(self.avail[j] * p)  # [K] a row gets past candidate j
        return lockstep.expected_tokens(reach, sizes or [])

    def step_cost(self, b: int, k: int) -> float | None:
        """Seconds per step at bucket b and K (decoding/step_cost.py); None until measured there."""
        return self.costs(b, k)

    def rates(
        self, b: int, sizes: list[int] | dict[int, int] | None = None, hope: float = 0.0
    ) -> dict[int, float]:
        """Expected tokens per row per second for every K, at bucket b (lockstep groups: sizes)."""
        cost = self.costs.upto(b, self.k_max)  # [K + 1]
        return {k: self.expected_tokens(k, sizes, hope) / c for k, c in enumerate(cost)}

    @property
    def lock(self) -> bool:
        """Whether the step just chosen must clip acceptance by lockstep group."""
        return self.sizes is not None

    def choose(self, batch_size: int, sizes: list[int] | None = None, request: object = None) -> int:
        """K for the next step of a batch; sizes: each row's lockstep group size (lockstep.py);
        request: at batch 1, the row's identity (a new one starts from the prior across requests)."""
        self.sizes = dict(Counter(sizes)) if sizes and max(sizes) > 1 else None  # {group size: rows}
        if batch_size == 1 and request is not None and request != self.request:
            self.request = request
            self.tail = self.prior.restart(self.accept, self.tail, self.rows_seen)
        prev, self.trial = self.last, None
        self.last = self._choose(bucket(batch_size))
        self.switched = prev == 0 and self.last > 0
        return self.last

    def _choose(self, b: int) -> int:
        self.steps += 1
        if self.costs.steps(b, False) < 2:
            return 0  # the baseline first, twice
        spec_steps = self.costs.steps(b, True)
        if spec_steps == 0 and self._verdict_below(b) is False:
            return 0  # it did not pay at a smaller batch: it will not here, so do not explore
        if spec_steps == 0 or (
            spec_steps < self.anchor_steps and self.rows_seen.get("accept0", 0.0) < self.anchor_rows
        ):  # a speculative point anchors the line, held until the acceptance is more than a coin flip
            return (self.k_max + 1) // 2
        rates = self.rates(b, self.sizes)
        if self.sizes is not None:  # unclipped speculation must pay for the lockstep it ends ...
            free = self.rates(b)
            best_free = max(free[k] for k in free if k)
            gain = best_free / max(rates.values())
            if (real := self._gain(b)) is not None:  # what unclipped speculation really gave here
                gain = min(gain, real)
            elif b >= 4 and max(self.sizes) > 2:  # ending a lockstep is for good: from groups of
                gain = 0.0  # three up, only on a measured gain, never on the model's word alone
            if (
                gain >= 1 + self._lock_margin(b)
                and best_free >= (1 + self._margin(b)) * free[0]
                and self._realized_ok(b)
            ):
                self.sizes, rates = None, free  # ... else every step, trials included, stays clipped
        best = max(rates, key=rates.get)
        speculating = self.last > 0
        kind = "lock" if self.sizes is not None else True  # which realized rates check this plan
        if rates[best] >= (1 + self._margin(b)) * rates[0] and self._realized_ok(b, kind):
            if self.steps % self.recheck_every == 0:  # keep the baseline and the neighbours fresh
                turn = (self.steps // self.recheck_every) % 4
                return (min(best + 1, self.k_max), 0, min(best + 1, self.k_max), max(best - 1, 1))[turn]
            return best
        # plain wins: bank tokens, and re-try the best speculative K once the bank covers its loss
        # (by the model, or by what speculation really gave here if worse; never free; coming from
        # plain steps, plus the draft's catching up, in tokens a plain step would give)
        trial = max(range(1, self.k_max + 1), key=rates.get)
        t = self.step_cost(b, trial)
        loss = max((rates[0] - rates[trial]) * t, 0.01 * rates[0] * t)  # tokens per row forgone
        spec, plain = self.realized.get((b, kind)), self.realized.get((b, False))
        if spec is not None and plain is not None:
            loss = max(loss, (plain.value - spec.value) * t)
        if not speculating:
            loss += self.sync * rates[0]
        self.credit[b] = self.credit.get(b, 0.0) + self.regret
        factor = self.hopeless if self.credit[b] >= loss and self._hopeless(b) else 1.0
        if self.credit[b] >= loss * factor:  # pay what the trial really costs once it has run
            self.trial = (b, factor, loss)
            return trial
        return 0

    def _hopeless(self, b: int) -> bool:
        """A trial that could not change the verdict is nearly a pure loss (in a lockstep group of
        16, every row must accept for any to advance): speculation would not win even with `hope` of
        the measured rejections away. Such a trial costs `hopeless` times its loss: rare, but never
        none, since acceptance only changes when something speculates."""
        hopeful = self.rates(b, self.sizes, hope=self.hope)
        return max(hopeful[k] for k in hopeful if k) < (1 + self._margin(b)) * hopeful[0]

    def _verdict_below(self, b: int) -> bool | None:
        """Whether speculation paid at the largest smaller bucket where both kinds of step were
        measured (None: nowhere yet). Its gain only shrinks as the batch grows (verification turns
        compute-bound), so a bucket never tried inherits a "no" and skips exploring: at equal
        output lengths one speculative step would also end plain decoding's lockstep for good."""
        for bb in sorted({bb for bb, _ in self.realized if bb < b}, reverse=True):
            if self._gain(bb) is not None:
                return self._realized_ok(bb)
        return None

    def _margin(self, b: int) -> float:
        """The gain K > 0 must promise at bucket b: `margin_1` at batch 1 (the model's error: one
        row has nothing to desynchronise), 1.2 x `margin` at 2, +0.02 per doubling after."""
        if b == 1:
            return self.margin_1
        return self.margin * (1 + b.bit_length() / 5 - 0.2)

    def _lock_margin(self, b: int) -> float:
        """What unclipped speculation must give over clipped (or plain) steps to end a lockstep at
        bucket b: `lock_margin` per doubling of the batch (a lockstep is worth more as it grows)."""
        return self.lock_margin * (b.bit_length() - 1)

    def _gain(self, b: int, kind: bool | str = True) -> float | None:
        """Realized speculative over plain tokens per row-second at bucket b, once both are measured
        (at least `min_rows` speculative row-steps: one row's step is one draw of 1..K+1 tokens)."""
        spec, plain = self.realized.get((b, kind)), self.realized.get((b, False))
        if spec is None or plain is None or spec.rows < self.min_rows or plain.rows < self.min_samples:
            return None
        return spec.value / plain.value if plain.value > 0 else None

    def _realized_ok(self, b: int, kind: bool | str = True) -> bool:
        """The model proposes, the measurements dispose: speculation (clipped: kind "lock") must
        have given the margin in tokens per row-second, where measured."""
        gain = self._gain(b, kind)
        return gain is None or gain >= 1 + self._margin(b)

    def observe(self, stats: StepStats) -> None:
        """Update from one decode step that ran with K = stats.k."""
        B, k = stats.batch_size, stats.k
        if not B:
            return
        key = (bucket(B), k)
        # a draft's catching up on earlier plain steps is the price of switching, not of K
        seconds = stats.propose_s - stats.sync_s + stats.verify_s
        steady = not stats.trial_settings  # a thread count under trial: not what K costs here
        if steady:
            self.costs.add(*key, seconds)
        if seconds > 0 and steady:  # switching cost left out here too: trials follow plain steps
            kind = "lock" if stats.lockstep and k else k > 0
            self.realized.setdefault((key[0], kind), RateAverage()).add(
                stats.emitted_tokens / B,
                seconds + self.costs.overhead,
                B,
                self.alpha,
                self.max_weight,
                self._stale(f"realized{key[0]}{kind}") if k else 0.0,  # a plain step's rate
                # is the same for every request: only speculation's goes stale
            )
        if self.switched and k and steady:  # what the next switch will cost the draft to catch up
            self.sync += 0.2 * (stats.sync_s - self.sync)
        if self.trial is not None and k:
            self._pay(stats, seconds)
        tail_reached = tail_accepted = 0
        for j in range(min(k, self.k_max)):
            reached = stats.reached_per_position[j] if j < len(stats.reached_per_position) else 0
            if reached:  # weighted by the rows it saw: one row at batch 1 is one coin flip
                a = stats.accepted_per_position[j] / reached
                self.accept[j] += self._weight(reached, f"accept{j}") * (a - self.accept[j])
                self.samples[j] += 1
                if j:
                    tail_reached += reached
                    tail_accepted += stats.accepted_per_position[j]
            v = stats.drafted_per_position[j] / B
            self.avail[j] += self._weight(B, f"avail{j}") * (v - self.avail[j])
        if tail_reached:
            self.tail += self._weight(tail_reached, "tail") * (tail_accepted / tail_reached - self.tail)

    def _pay(self, stats: StepStats, seconds: float) -> None:
        """Debit a trial's real cost, in tokens per row: what plain steps would have given in its
        time (the draft's catching up included) less what it gave. The bank decided on a
        prediction; the debt is the measurement, so exploring costs `regret` however far the draft lagged."""
        (b, factor, predicted), self.trial = self.trial, None
        plain = self.step_cost(b, 0) or 1e-9  # seconds per plain step, overhead included
        spent = (seconds + self.costs.overhead + stats.sync_s) / plain  # in plain steps
        lost = max(spent - stats.emitted_tokens / stats.batch_size, 0.01 * spent)
        if stats.trial_settings:  # timed on a thread count under trial: not exploring's cost
            lost = predicted
        self.credit[b] = self.credit.get(b, 0.0) - factor * lost

    def _weight(self, rows: float, name: str) -> float:
        """Moving-average weight of a step's outcome over `rows` rows: as many single updates, up
        to `max_weight` (rows of one step are alike); while an average has seen few rows, their
        plain mean (the prior must not linger at batch 1); after a run without updates, more."""
        seen = self.rows_seen.get(name, 0.0) + rows
        self.rows_seen[name] = seen
        fresh = min(1.0 - (1.0 - self.alpha) ** rows, self.max_weight)
        return max(fresh, rows / (seen + 1), self._stale(name))

    def _stale(self, name: str) -> float:
        """The least weight of a new outcome for an average last updated `steps` ago: at batch 1
        the acceptance is the current request's, and after a plain run it may be another's."""
        last, self.updated[name] = self.updated.get(name, self.steps), self.steps
        return min(1.0 - (1.0 - self.forget) ** (self.steps - last), self.max_weight)
