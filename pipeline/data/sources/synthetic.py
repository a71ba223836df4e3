"""The built-in synthetic e-commerce database, with signal planted several hops deep.

Tables (one sub-directory of parquet files per table, ``<table>/part-<chunk:05d>.parquet``):

    categories   category_id, name, department                            static
    products     product_id, category_id, title, brand, price, weight_kg, is_eco,
                 created_at, avg_rating*, review_count*                    time: created_at
    customers    customer_id, signup_at, country, age, segment,
                 acquisition_channel, marketing_opt_in                     time: signup_at
    orders       order_id, customer_id, ordered_at, channel, payment_method,
                 coupon_used, shipping_cost, total_amount, status*         time: ordered_at
    order_items  order_id, product_id, ordered_at, quantity, unit_price    no key; time: ordered_at
    returns      return_id, order_id, product_id, customer_id, returned_at, reason,
                 refund_amount                                             time: returned_at
    reviews      review_id, customer_id, product_id, reviewed_at, rating, text,
                 helpful_votes                                             time: reviewed_at

(*) snapshot columns as a real warehouse would hold them on the last day: they summarise
rows from the future of any cutoff (order ``status`` knows about later returns,
``avg_rating`` about later reviews), so the spec lists them in ``ignore_columns``.

The history spans ``weeks`` (default 104) weeks ending at ``end``. All timestamps are
UTC-naive and lie in ``[end - weeks * 7d, end]``.

Generative story
----------------
Catalog (global, once). 24 categories in 13 departments. Each category k has a hidden
*retention* ``rho_k`` in [-1, 1] (consumables such as pet food and coffee bring people
back, furniture and computers do not), a repeat-purchase probability and a price level.
Each product p has a Zipf popularity inside its category and a hidden defect rate
``d_p``: a product is a *lemon* with probability ``pi_b ~ Beta(1, 6)`` of its brand b;
lemons have ``d_p ~ U(0.6, 0.9)``, other products ``d_p ~ Beta(1.5, 150)`` (about 1%).
About 14% of products are lemons; a third of the catalog launches during the history.

Customers (chunk by chunk, independent given the catalog). Customer c signs up at
``signup_c`` (density growing over time) and has a mean gap between orders
``mu_c ~ 21d * LogNormal(0, 0.55)`` (shorter for business and premium segments), a
category preference ``pref_c ~ Gamma(0.2) * category share`` (normalized: a few
favourite categories), a basket size, and a base weekly hazard ``h0_c`` of leaving for
good (higher for paid-social acquisitions and bargain hunters, lower for premium).

Weekly time steps s = 0..weeks-1, over all customers of a chunk at once:

1. Leaving. A customer who signed up before the step leaves for good with probability
   ``1 - exp(-h_c)``, where

       h_c = h0_c * (1 + exp(-tenure_c / 8 weeks)) * exp(A * D_c / (1 + 0.1 m_c) - B * R_c)

   with A = 5.5 and B = 3. ``D_c`` is the customer's number of *bad experiences* and
   ``m_c`` their number of items, both decaying with a half-life of 10 weeks: one bad
   item among two makes leaving almost certain, one among twenty multiplies the hazard
   by about 6 (loyal heavy buyers forgive). ``R_c = sum_i rho_k(i) / (n_i + 1)`` is the
   shrunken mean retention of the categories of the items i they bought (half-life 26
   weeks).
2. Ordering. Orders follow a renewal process: each order comes a
   ``Gamma(1.3, mu_c / 1.3 / season(t))`` gap after the previous one (the first within
   two days of sign-up for 85% of customers). Gaps are a little more regular than
   Poisson, so a long silence is some, not conclusive, evidence of having left.
3. Items. ``1 + Poisson(basket_c)`` items per order. Item category ~ ``pref_c``; the
   product is the customer's last product in that category with the category's repeat
   probability (never one that disappointed them), else drawn by popularity among the
   products that exist at that time.
4. Experience. Each item is a bad experience with probability ``d_p``. A bad experience
   is returned with probability 0.55 (a good one with 0.015) and reviewed with
   probability 0.25 (0.08), with a low rating. ``D_c`` grows by the step's bad
   experiences, ``m_c`` by its items, ``R_c`` by its items' ``rho_k``.

What a model can see, by hops from the customer:

- (a) recency, frequency, tenure, spend: 1 hop (customer <- orders).
- (b) defects: ``d_p`` is never stored, but everyone's returns and low reviews of p
  reveal it. The return rate of the products c bought, as returned by OTHER customers,
  is customer <- orders <- order_items -> products <- returns: 3 hops. About 35% of c's
  own bad experiences leave neither a return nor a review, so this product-side estimate
  carries information that c's own rows miss.
- (c) category mix: customer <- orders <- order_items -> products -> categories.

Measured on ``customer_churn`` (30,000 customers, logistic regression on SQL features,
fitted on 8 monthly cutoffs and scored on the next 4; tests/test_synthetic.py does this
at 6,000): recency + frequency 0.75 AUROC; + other customers' return rate of the bought
products 0.79; + category shares instead 0.76; all three 0.79. Hence the expected
ranking: a flat model of the customers table (segment, acquisition channel, tenure) <
per-customer aggregates of orders (a) < multi-table aggregates that join items to
products and products to their returns and categories (a + b + c) <= a GNN, which
learns those joins itself (and also sees reviews and brand-level defect propensity). ``customer_ltv`` follows from the
same leaving process times ``mu_c``, basket size and category prices (gradient boosting
on recency, frequency and past spend: 12% lower MAE than the best constant);
``customer_next_products`` from ``pref_c``, repeat purchases of consumables and
popularity (ranking the customer's past purchases: MAP@10 0.084, global popularity 0.029).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

DEFAULT_SCALE = 10_000
DEFAULT_END = datetime(2025, 12, 31, 23, 59, 59)
TABLES = ("categories", "products", "customers", "orders", "order_items", "returns", "reviews")

DAY = 86_400
WEEK = 7 * DAY

# Hazard coefficients of the generative story (module docstring): A scales the
# dissatisfaction D_c (bad experiences, diluted by ITEM_DILUTION per recent item), B the
# category retention score R_c.
DISSATISFACTION_COEF = 5.5
RETENTION_COEF = 3.0
DISSATISFACTION_HALF_LIFE_WEEKS = 10.0
ITEM_DILUTION = 0.1
RETENTION_HALF_LIFE_WEEKS = 26.0
BASE_WEEKLY_HAZARD = 0.008
NEW_CUSTOMER_BOOST = 1.0
NEW_CUSTOMER_WEEKS = 8.0
GAP_SHAPE = 1.3
MEDIAN_GAP_DAYS = 21.0
P_RETURN_BAD, P_RETURN_GOOD = 0.55, 0.015
P_REVIEW_BAD, P_REVIEW_GOOD = 0.25, 0.08
LEMON_PROPENSITY_BETA = (1.0, 6.0)  # per brand
LEMON_DEFECT_RANGE = (0.6, 0.9)
SOUND_DEFECT_BETA = (1.5, 150.0)
PREFERENCE_CONCENTRATION = 0.2  # gamma shape of category preferences: smaller = fewer favourites

# name, department, retention rho_k, median price, repeat probability, mean extra quantity, nouns
_CATEGORIES = (
    ("Coffee & tea", "Grocery", 0.9, 12.0, 0.55, 0.6,
     ("coffee beans", "green tea", "espresso pods", "herbal tea", "cold brew")),
    ("Snacks", "Grocery", 0.6, 6.0, 0.45, 0.8,
     ("granola bars", "trail mix", "dark chocolate", "rice crackers", "dried mango")),
    ("Pet food", "Pets", 1.0, 30.0, 0.65, 0.3,
     ("dry dog food", "cat food", "bird seed", "dog treats", "kitten food")),
    ("Pet toys", "Pets", 0.2, 12.0, 0.10, 0.2,
     ("chew toy", "cat scratcher", "rope toy", "laser pointer", "dog ball")),
    ("Skincare", "Beauty", 0.6, 22.0, 0.45, 0.2,
     ("face cream", "serum", "cleanser", "sunscreen", "lip balm")),
    ("Makeup", "Beauty", 0.3, 18.0, 0.30, 0.1, ("lipstick", "mascara", "foundation", "eyeliner", "blush")),
    ("Hair care", "Beauty", 0.5, 14.0, 0.45, 0.3,
     ("shampoo", "conditioner", "hair oil", "hair mask", "dry shampoo")),
    ("Baby care", "Baby", 0.8, 25.0, 0.55, 0.5,
     ("diapers", "baby wipes", "baby lotion", "bibs", "teething ring")),
    ("Cleaning", "Household", 0.7, 9.0, 0.50, 0.6,
     ("dish soap", "laundry detergent", "sponges", "glass cleaner", "trash bags")),
    ("Kitchenware", "Home", -0.2, 35.0, 0.05, 0.05,
     ("frying pan", "knife set", "cutting board", "mixing bowl", "saucepan")),
    ("Bedding", "Home", -0.3, 60.0, 0.05, 0.1,
     ("duvet cover", "pillow", "bed sheets", "blanket", "mattress topper")),
    ("Furniture", "Home", -0.8, 180.0, 0.02, 0.0,
     ("desk chair", "bookshelf", "side table", "floor lamp", "sofa")),
    ("Shirts", "Clothing", 0.0, 30.0, 0.10, 0.2, ("shirt", "t-shirt", "polo shirt", "blouse", "tank top")),
    ("Trousers", "Clothing", -0.1, 45.0, 0.08, 0.1, ("jeans", "chinos", "trousers", "shorts", "joggers")),
    ("Shoes", "Clothing", -0.3, 80.0, 0.05, 0.0,
     ("sneakers", "boots", "sandals", "loafers", "running shoes")),
    ("Outerwear", "Clothing", -0.4, 120.0, 0.03, 0.0, ("jacket", "raincoat", "parka", "hoodie", "fleece")),
    ("Phone accessories", "Electronics", -0.2, 20.0, 0.10, 0.2,
     ("phone case", "charging cable", "screen protector", "power bank", "car mount")),
    ("Audio", "Electronics", -0.6, 90.0, 0.03, 0.0,
     ("headphones", "earbuds", "bluetooth speaker", "soundbar", "turntable")),
    ("Computers", "Electronics", -1.0, 320.0, 0.02, 0.0,
     ("laptop", "monitor", "keyboard", "mouse", "webcam")),
    ("Small appliances", "Appliances", -0.7, 80.0, 0.03, 0.0,
     ("toaster", "blender", "kettle", "coffee maker", "air fryer")),
    ("Books", "Media", 0.4, 15.0, 0.05, 0.1,
     ("novel", "cookbook", "travel guide", "biography", "comic book")),
    ("Toys", "Toys", -0.2, 25.0, 0.05, 0.1,
     ("puzzle", "building blocks", "board game", "plush toy", "toy car")),
    ("Sports", "Sports", -0.3, 40.0, 0.05, 0.1,
     ("yoga mat", "dumbbells", "water bottle", "running belt", "jump rope")),
    ("Garden", "Garden", 0.1, 25.0, 0.15, 0.3,
     ("plant pot", "tomato seeds", "garden gloves", "watering can", "pruning shears")),
)

# Title adjectives per department: "Blue cotton shirt", "Organic coffee beans".
_ADJECTIVES = {
    "Grocery": ("Organic", "Classic", "Single-origin", "Fair-trade", "Salted", "Family-size"),
    "Pets": ("Grain-free", "Large", "Small", "Natural", "Durable", "Senior"),
    "Beauty": ("Hydrating", "Vegan", "Fragrance-free", "Matte", "Daily", "Travel-size"),
    "Baby": ("Sensitive", "Organic", "Soft", "Size 3", "Newborn", "Unscented"),
    "Household": ("Lemon", "Eco", "Concentrated", "Heavy-duty", "Lavender", "Refill"),
    "Home": ("Grey", "White", "Oak", "Linen", "Cast-iron", "Velvet"),
    "Clothing": ("Blue cotton", "Black", "White linen", "Red", "Slim-fit", "Grey wool"),
    "Electronics": ("Wireless", "Black", "Compact", "Pro", "Fast-charging", "Noise-cancelling"),
    "Appliances": ("Stainless", "Compact", "Retro", "Smart", "White", "Digital"),
    "Media": ("Illustrated", "Paperback", "Hardcover", "Bestselling", "Pocket", "Collector's"),
    "Toys": ("Wooden", "Colorful", "Magnetic", "Classic", "Giant", "Mini"),
    "Sports": ("Non-slip", "Adjustable", "Lightweight", "Insulated", "Pro", "Foldable"),
    "Garden": ("Terracotta", "Heirloom", "Ergonomic", "Galvanized", "Large", "Self-watering"),
}
_BRAND_HEADS = (
    "Nor", "Vel", "Aur", "Kin", "Lum", "Tor", "Bri", "Cas", "Del", "Fen", "Gal", "Hal", "Iso", "Jun",
    "Kal", "Lor", "Mar", "Nov", "Oro", "Pax", "Quin", "Ros", "Sol", "Tam", "Ulm", "Vir", "Wex", "Zen",
    "Alba", "Bel", "Cor", "Dun", "Elm", "Fjor", "Gren", "Hav", "Ivo", "Jas", "Kor", "Lyn",
)
_BRAND_TAILS = (
    "a", "ex", "ora", "ico", "ana", "wood", "line", "craft", "works", "ly", "io", "ix", "lab", "co",
    "ster", "vale", "mark", "field", "well", "nest", "ford", "ton", "berg", "wick", "smith", "home",
    "ware", "gear", "fit", "pure", "leaf", "peak", "bay", "stone", "form", "ova", "elle", "one",
    "wise", "point", "star", "moor", "dale", "crest", "glow", "kind", "mill", "path", "ridge", "tide",
)

_COUNTRIES = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "SE", "PL", "CA")
_COUNTRY_P = (0.34, 0.14, 0.13, 0.1, 0.07, 0.06, 0.05, 0.04, 0.04, 0.03)
# segment: share, gap multiplier, basket (mean extra items), price appetite, hazard multiplier, coupon rate
_SEGMENTS = ("regular", "bargain_hunter", "premium", "business")
_SEGMENT_P = np.array([0.55, 0.25, 0.12, 0.08])
_SEGMENT_GAP = np.array([1.0, 1.1, 0.8, 0.6])
_SEGMENT_BASKET = np.array([0.7, 0.9, 0.8, 1.6])
_SEGMENT_HAZARD = np.array([1.0, 1.25, 0.6, 0.8])
_SEGMENT_COUPON = np.array([0.15, 0.6, 0.05, 0.1])
_ACQUISITION = ("organic", "paid_search", "paid_social", "referral", "affiliate")
_ACQUISITION_P = np.array([0.35, 0.25, 0.2, 0.12, 0.08])
_ACQUISITION_HAZARD = np.array([0.85, 1.0, 1.5, 0.75, 1.2])
_CHANNELS = ("web", "app", "marketplace", "phone")
_CHANNEL_P = np.array([0.5, 0.32, 0.15, 0.03])
_PAYMENTS = ("card", "paypal", "gift_card", "bank_transfer", "buy_now_pay_later")
_PAYMENT_P = np.array([0.55, 0.25, 0.04, 0.06, 0.10])
_STATUSES = ("delivered", "partially_returned", "returned")
_REASONS_BAD = ("defective", "damaged on arrival", "not as described")
_REASONS_GOOD = ("changed mind", "wrong size", "found cheaper elsewhere", "arrived late")
_REVIEW_TEXTS = (  # indexed by rating - 1
    ("Broke after a week", "Terrible quality", "Stopped working", "Complete waste of money"),
    ("Disappointing", "Cheaply made", "Not as pictured", "Would not buy again"),
    ("It's okay", "Average quality", "Does the job", "Expected better"),
    ("Good value", "Works well", "Happy with it", "Nice quality"),
    ("Love it", "Excellent quality", "Exactly as described", "Best purchase this year"),
)
_REVIEW_P_BAD = np.array([0.6, 0.4, 0.0, 0.0, 0.0])
_REVIEW_P_GOOD = np.array([0.0, 0.02, 0.13, 0.35, 0.5])


@dataclass(frozen=True)
class SyntheticConfig:
    """How much to generate and from which seed.

    Args:
        scale: number of customers (1,000 to 2,000,000); about 20 rows in all per customer.
        seed: the same seed and config give byte-identical parquet.
        chunk_customers: customers simulated together; bounds memory (peak RSS about
            0.45 GB at 50,000, whatever the scale). The output depends on it: each chunk
            draws from its own random stream.
        end: last instant of the history (UTC-naive).
        weeks: length of the history in weekly simulation steps.
    """

    scale: int = DEFAULT_SCALE
    seed: int = 0
    chunk_customers: int = 50_000
    end: datetime = field(default=DEFAULT_END)
    weeks: int = 104

    def __post_init__(self) -> None:
        if not 1_000 <= self.scale <= 2_000_000:
            raise ValueError(
                f"synthetic scale must be between 1,000 and 2,000,000 customers, got {self.scale:,}")
        if self.chunk_customers < 100:
            raise ValueError(f"synthetic chunk_customers must be at least 100, got {self.chunk_customers}")
        if self.weeks < 8:
            raise ValueError(f"synthetic weeks must be at least 8, got {self.weeks}")
        if self.end.tzinfo is not None:
            raise ValueError(f"synthetic end must be UTC-naive, got {self.end.isoformat()}")

    @property
    def start(self) -> datetime:
        return self.end - timedelta(weeks=self.weeks)

    @property
    def n_products(self) -> int:
        return int(min(50_000, max(500, self.scale // 20)))


def generate(
    out_dir: Path, config: SyntheticConfig = SyntheticConfig(), progress: bool = False,
) -> dict[str, int]:
    """Write every table as ``out_dir/<table>/part-<chunk:05d>.parquet``; return rows per table.

    Existing ``part-*.parquet`` files in those table directories are removed first, so a
    smaller run never leaves parts of a bigger one behind.
    """
    out_dir = Path(out_dir)
    for table in TABLES:
        table_dir = out_dir / table
        if table_dir.exists():
            for stale in table_dir.glob("part-*.parquet"):
                stale.unlink()
        table_dir.mkdir(parents=True, exist_ok=True)

    start_s = _epoch_seconds(config.start)
    end_s = _epoch_seconds(config.end)
    catalog = _Catalog.build(config, np.random.default_rng([config.seed, 0]), start_s, end_s)
    counts = dict.fromkeys(TABLES, 0)
    counts["categories"] = _write(out_dir, "categories", 0, catalog.categories_table())

    chunk_starts = range(0, config.scale, config.chunk_customers)
    ids = _IdCounters()
    rating_sum = np.zeros(catalog.n_products)
    rating_n = np.zeros(catalog.n_products, dtype=np.int64)
    # Parquet encoding releases the GIL: chunk i's tables are written by background threads
    # while chunk i+1 is simulated. Waiting for chunk i before queueing i+1 keeps at most two
    # chunks in memory.
    with ThreadPoolExecutor(max_workers=2) as writer:
        pending: list[Future[int]] = []
        bar = tqdm(chunk_starts, desc="synthetic ecommerce", unit="chunk", disable=not progress)
        for chunk, first in enumerate(bar):
            n = min(config.chunk_customers, config.scale - first)
            rng = np.random.default_rng([config.seed, 1, chunk])
            tables = _simulate_chunk(catalog, config, rng, first, n, start_s, end_s, ids)
            reviews = tables["reviews"]
            product_idx = reviews["product_id"].to_numpy() - 1
            rating_sum += np.bincount(product_idx, weights=reviews["rating"].to_numpy(),
                                      minlength=catalog.n_products)
            rating_n += np.bincount(product_idx, minlength=catalog.n_products)
            for future in pending:
                future.result()
            pending = [writer.submit(_write, out_dir, table, chunk, data) for table, data in tables.items()]
            for table, data in tables.items():
                counts[table] += data.num_rows
        for future in pending:
            future.result()

    counts["products"] = _write(out_dir, "products", 0, catalog.products_table(rating_sum, rating_n))
    return counts


def _epoch_seconds(moment: datetime) -> int:
    return int((moment - datetime(1970, 1, 1)).total_seconds())


def _timestamps(seconds: np.ndarray) -> pa.Array:
    return pa.array(seconds.astype(np.int64) * 1_000_000, type=pa.timestamp("us"))


def _strings(vocabulary: tuple[str, ...] | list[str], index: np.ndarray) -> pa.Array:
    return pa.array(vocabulary, type=pa.string()).take(pa.array(index.astype(np.int32)))


def _write(out_dir: Path, table: str, chunk: int, data: pa.Table) -> int:
    # dictionary pages for strings only: trying them on ids, times and amounts costs about
    # a quarter of the write time and then falls back to plain encoding anyway
    strings = [f.name for f in data.schema if pa.types.is_string(f.type)]
    pq.write_table(data, out_dir / table / f"part-{chunk:05d}.parquet", compression="snappy",
                   use_dictionary=strings)
    return data.num_rows


def _choice(rng: np.random.Generator, p: np.ndarray, size: int) -> np.ndarray:
    """Vectorized categorical draw from one probability vector ``p``: (size,) int64."""
    return np.minimum(np.searchsorted(np.cumsum(p), rng.random(size), side="right"), len(p) - 1)


def _choice_rows(rng: np.random.Generator, cumulative: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a (n, K) normalized cumulative matrix: (n,) int64."""
    u = rng.random(len(cumulative), dtype=np.float32)[:, None]
    return np.minimum((cumulative < u).sum(axis=1), cumulative.shape[1] - 1)


@dataclass
class _IdCounters:
    """Next free id per table; ids stay unique across chunks."""

    order: int = 1
    ret: int = 1
    review: int = 1


@dataclass
class _Catalog:
    """Categories and products, with their hidden parameters (never written)."""

    category_name: tuple[str, ...]
    category_department: np.ndarray  # (K,) int, index into departments
    departments: tuple[str, ...]
    retention: np.ndarray  # (K,) rho_k
    repeat_p: np.ndarray  # (K,)
    extra_quantity: np.ndarray  # (K,)
    category_share: np.ndarray  # (K,) global popularity of categories
    product_category: np.ndarray  # (P,) products are sorted by category
    product_price: np.ndarray  # (P,)
    product_defect: np.ndarray  # (P,) hidden d_p
    product_weight: np.ndarray  # (P,) popularity inside the category
    product_created: np.ndarray  # (P,) epoch seconds
    product_title: pa.Array
    product_brand: pa.Array
    product_kg: np.ndarray
    product_eco: np.ndarray
    category_first: np.ndarray  # (K,) first product index of each category
    category_last: np.ndarray  # (K,) one past the last

    @property
    def n_products(self) -> int:
        return len(self.product_category)

    @classmethod
    def build(cls, config: SyntheticConfig, rng: np.random.Generator, start_s: int, end_s: int) -> _Catalog:
        names, depts, rho, med_price, repeat, extra_q, nouns = zip(*_CATEGORIES)
        departments = tuple(dict.fromkeys(depts))
        dept_idx = np.array([departments.index(d) for d in depts])
        n_cat, n_dept = len(names), len(departments)
        share = rng.gamma(4.0, size=n_cat)
        share /= share.sum()

        n_products = config.n_products
        # every category gets at least 10 products, the rest by share; sorted by category
        per_cat = 10 + np.floor(share * (n_products - 10 * n_cat)).astype(np.int64)
        per_cat[np.argmax(share)] += n_products - per_cat.sum()
        category = np.repeat(np.arange(n_cat), per_cat)
        last = np.cumsum(per_cat)
        first = last - per_cat
        rank_in_cat = np.arange(n_products) - first[category]

        price = np.round(np.asarray(med_price)[category] * rng.lognormal(0.0, 0.3, n_products), 2)
        price = np.maximum(price, 0.99)
        # Zipf-like popularity: each product gets a random rank in 1..(size of its category)
        zipf_rank = 1 + rng.permutation(n_products) % np.maximum(per_cat[category], 1)
        weight = zipf_rank.astype(np.float64) ** -0.9 * rng.lognormal(0.0, 0.3, n_products)

        # about 20 products per brand; each brand sells in one department
        all_brands = [(h + t).capitalize() for h in _BRAND_HEADS for t in _BRAND_TAILS]
        n_brands_per_dept = int(np.clip(n_products // (20 * n_dept), 3, len(all_brands) // n_dept))
        brand_names = [all_brands[i] for i in rng.permutation(len(all_brands))[: n_brands_per_dept * n_dept]]
        brand = dept_idx[category] * n_brands_per_dept + rng.integers(0, n_brands_per_dept, n_products)
        lemon_propensity = rng.beta(*LEMON_PROPENSITY_BETA, n_brands_per_dept * n_dept)
        lemon = rng.random(n_products) < lemon_propensity[brand]
        defect = np.where(lemon, rng.uniform(*LEMON_DEFECT_RANGE, n_products),
                          rng.beta(*SOUND_DEFECT_BETA, n_products))

        # a third of each category launches later; the rest (and the first 3 per category,
        # so that every category is always buyable) exist from the start
        late = (rng.random(n_products) < 0.35) & (rank_in_cat >= 3)
        created = np.where(late, rng.integers(start_s, end_s - 4 * WEEK, n_products), start_s)

        adjectives = [_ADJECTIVES[d] for d in departments]
        titles: list[str] = []
        title_offset = np.zeros(n_cat, dtype=np.int64)
        for k in range(n_cat):
            title_offset[k] = len(titles)
            titles.extend(f"{a} {noun}" for a in adjectives[dept_idx[k]] for noun in nouns[k])
        combos = np.array([len(adjectives[dept_idx[k]]) * len(nouns[k]) for k in range(n_cat)])
        title_idx = title_offset[category] + rng.integers(0, combos[category])
        kg = np.round(rng.lognormal(np.log(np.sqrt(np.asarray(med_price)[category]) / 6.0), 0.5), 3)
        return cls(
            category_name=names, category_department=dept_idx, departments=departments,
            retention=np.asarray(rho), repeat_p=np.asarray(repeat), extra_quantity=np.asarray(extra_q),
            category_share=share, product_category=category, product_price=price, product_defect=defect,
            product_weight=weight, product_created=created.astype(np.int64),
            product_title=_strings(titles, title_idx), product_brand=_strings(brand_names, brand),
            product_kg=kg, product_eco=rng.random(n_products) < 0.15,
            category_first=first, category_last=last,
        )

    def categories_table(self) -> pa.Table:
        return pa.table({
            "category_id": pa.array(np.arange(1, len(self.category_name) + 1), pa.int64()),
            "name": pa.array(self.category_name, pa.string()),
            "department": _strings(self.departments, self.category_department),
        })

    def products_table(self, rating_sum: np.ndarray, rating_n: np.ndarray) -> pa.Table:
        avg = np.where(rating_n > 0, np.round(rating_sum / np.maximum(rating_n, 1), 2), np.nan)
        return pa.table({
            "product_id": pa.array(np.arange(1, self.n_products + 1), pa.int64()),
            "category_id": pa.array(self.product_category + 1, pa.int64()),
            "title": self.product_title,
            "brand": self.product_brand,
            "price": pa.array(self.product_price, pa.float64()),
            "weight_kg": pa.array(self.product_kg, pa.float64()),
            "is_eco": pa.array(self.product_eco, pa.bool_()),
            "created_at": _timestamps(self.product_created),
            "avg_rating": pa.array(avg, pa.float64(), from_pandas=True),
            "review_count": pa.array(rating_n, pa.int64()),
        })

    def cumulative_weights(self, at_s: int) -> np.ndarray:
        """(P,) cumulative popularity over the products that exist at ``at_s``."""
        return np.cumsum(np.where(self.product_created <= at_s, self.product_weight, 0.0))


def _simulate_chunk(
    cat: _Catalog, config: SyntheticConfig, rng: np.random.Generator, first_id: int, n: int,
    start_s: int, end_s: int, ids: _IdCounters,
) -> dict[str, pa.Table]:
    """Simulate ``n`` customers over all weekly steps; return their rows in every event table."""
    n_cat = len(cat.category_name)
    span = end_s - start_s
    # customers: sign-up density grows over time (u ** 0.8), none in the last day; ids follow
    # sign-up order so that the customers born by any time are a prefix of the chunk
    signup = np.sort(start_s + (rng.random(n) ** 0.8 * (span - DAY)).astype(np.int64))
    segment = _choice(rng, _SEGMENT_P, n)
    acquisition = _choice(rng, _ACQUISITION_P, n)
    country = _choice(rng, np.asarray(_COUNTRY_P), n)
    age = np.clip(np.round(rng.normal(38 + 6 * (segment == 2), 12, n)), 18, 85).astype(np.int64)
    opt_in = rng.random(n) < 0.45

    mean_gap = MEDIAN_GAP_DAYS * DAY * _SEGMENT_GAP[segment] * rng.lognormal(0.0, 0.55, n)
    basket = _SEGMENT_BASKET[segment] * rng.lognormal(0.0, 0.3, n)
    base_hazard = (BASE_WEEKLY_HAZARD * _SEGMENT_HAZARD[segment] * _ACQUISITION_HAZARD[acquisition]
                   * rng.lognormal(0.0, 0.5, n))
    pref = rng.gamma(PREFERENCE_CONCENTRATION, size=(n, n_cat)) * cat.category_share + 1e-9
    # float32 halves the memory traffic of the per-item gather below
    cum_pref = np.cumsum(pref, axis=1)
    cum_pref = (cum_pref / cum_pref[:, -1:]).astype(np.float32)
    channel_pref = _choice(rng, _CHANNEL_P, n)
    payment_pref = _choice(rng, _PAYMENT_P, n)

    # state; dissatisfaction and retention are stored divided by their decay factor to the
    # power of the step, so that decaying everyone every step costs nothing
    quick_first = rng.random(n) < 0.85
    first_gap = np.where(quick_first, rng.random(n) * 2 * DAY, rng.gamma(GAP_SHAPE, mean_gap / GAP_SHAPE))
    next_at = signup + first_gap.astype(np.int64)
    dissatisfaction = np.zeros(n)
    recent_items = np.zeros(n)
    retention_sum = np.zeros(n)
    retention_n = np.zeros(n)
    last_in_cat = np.full((n, n_cat), -1, dtype=np.int64)
    d_decay = 0.5 ** (1.0 / DISSATISFACTION_HALF_LIFE_WEEKS)
    r_decay = 0.5 ** (1.0 / RETENTION_HALF_LIFE_WEEKS)
    live = np.zeros(0, dtype=np.int64)  # customers signed up and not gone, by index
    n_born = 0

    orders: dict[str, list[np.ndarray]] = {k: [] for k in ("cust", "at", "channel", "payment", "coupon")}
    items: dict[str, list[np.ndarray]] = {k: [] for k in ("order", "product", "qty", "price", "bad")}
    n_orders_so_far = 0
    for step in range(config.weeks):
        t0 = start_s + step * WEEK
        t1 = min(t0 + WEEK, end_s + 1)
        d_scale, r_scale = d_decay**step, r_decay**step
        tenure_weeks = (t0 - signup[live]) / WEEK
        hazard = (base_hazard[live] * (1.0 + NEW_CUSTOMER_BOOST * np.exp(-tenure_weeks / NEW_CUSTOMER_WEEKS))
                  * np.exp(DISSATISFACTION_COEF * dissatisfaction[live]
                           / (1.0 / d_scale + ITEM_DILUTION * recent_items[live])
                           - RETENTION_COEF * retention_sum[live] / (retention_n[live] + 1.0 / r_scale)))
        live = live[rng.random(len(live)) >= -np.expm1(-hazard)]
        born_by_t1 = int(np.searchsorted(signup, t1))
        live = np.concatenate([live, np.arange(n_born, born_by_t1)])
        n_born = born_by_t1

        # renewal process: every order due in [t0, t1) schedules the next one
        season = 1.0 + 0.12 * np.sin(2 * np.pi * (t0 / DAY / 365.25 - 0.2)) + 0.35 * _holiday_peak(t0)
        step_cust, step_at = [], []
        due = live[next_at[live] < t1]
        while len(due):
            step_cust.append(due)
            step_at.append(next_at[due])
            next_at[due] += rng.gamma(GAP_SHAPE, mean_gap[due] / GAP_SHAPE / season).astype(np.int64) + 3600
            due = due[next_at[due] < t1]
        if not step_cust:
            continue
        o_cust = np.concatenate(step_cust)
        o_at = np.concatenate(step_at)
        by_time = np.argsort(o_at, kind="stable")
        o_cust, o_at = o_cust[by_time], o_at[by_time]
        n_o = len(o_cust)
        o_channel = np.where(rng.random(n_o) < 0.8, channel_pref[o_cust], _choice(rng, _CHANNEL_P, n_o))
        o_payment = np.where(rng.random(n_o) < 0.85, payment_pref[o_cust], _choice(rng, _PAYMENT_P, n_o))
        o_coupon = rng.random(n_o) < _SEGMENT_COUPON[segment[o_cust]]

        # items: category by preference, product by repeat or popularity among existing ones
        n_items = 1 + rng.poisson(basket[o_cust])
        i_order = np.repeat(np.arange(n_o), n_items)
        i_cust = o_cust[i_order]
        i_cat = _choice_rows(rng, cum_pref[i_cust])
        cw = cat.cumulative_weights(t0)
        lo = np.where(cat.category_first > 0, cw[cat.category_first - 1], 0.0)[i_cat]
        hi = cw[cat.category_last - 1][i_cat]
        target = lo + rng.random(len(i_cat)) * (hi - lo)
        drawn = np.minimum(np.searchsorted(cw, target, side="right"), cat.category_last[i_cat] - 1)
        previous = last_in_cat[i_cust, i_cat]
        repeat = (previous >= 0) & (rng.random(len(i_cat)) < cat.repeat_p[i_cat])
        i_product = np.where(repeat, previous, drawn)
        i_qty = 1 + rng.poisson(cat.extra_quantity[i_cat])
        discount = np.where(o_coupon[i_order], 0.15, 0.0) + np.where(rng.random(len(i_cat)) < 0.1, 0.2, 0.0)
        i_price = np.round(cat.product_price[i_product] * (1.0 - discount), 2)
        i_bad = rng.random(len(i_cat)) < cat.product_defect[i_product]

        # state updates; a disappointing product is never bought again on repeat
        last_in_cat[i_cust, i_cat] = np.where(i_bad, -1, i_product)
        np.add.at(dissatisfaction, i_cust, i_bad / d_scale)
        np.add.at(recent_items, i_cust, 1.0 / d_scale)
        np.add.at(retention_sum, i_cust, cat.retention[i_cat] / r_scale)
        np.add.at(retention_n, i_cust, 1.0 / r_scale)

        orders["cust"].append(o_cust)
        orders["at"].append(o_at)
        orders["channel"].append(o_channel)
        orders["payment"].append(o_payment)
        orders["coupon"].append(o_coupon)
        items["order"].append(i_order + n_orders_so_far)
        items["product"].append(i_product)
        items["qty"].append(i_qty)
        items["price"].append(i_price)
        items["bad"].append(i_bad)
        n_orders_so_far += n_o

    return _assemble(cat, rng, first_id, n, end_s, ids, orders, items, signup=signup, segment=segment,
                     acquisition=acquisition, country=country, age=age, opt_in=opt_in)


def _holiday_peak(t_s: int) -> float:
    """Bump around late November / December (day of year ~ 335, width ~ 15 days)."""
    day_of_year = (t_s / DAY) % 365.25
    return float(np.exp(-0.5 * ((day_of_year - 335.0) / 15.0) ** 2))


def _assemble(
    cat: _Catalog, rng: np.random.Generator, first_id: int, n: int, end_s: int, ids: _IdCounters,
    orders: dict[str, list[np.ndarray]], items: dict[str, list[np.ndarray]], *, signup: np.ndarray,
    segment: np.ndarray, acquisition: np.ndarray, country: np.ndarray, age: np.ndarray, opt_in: np.ndarray,
) -> dict[str, pa.Table]:
    """Turn one chunk's simulated arrays into Arrow tables with global ids."""
    empty = np.zeros(0, dtype=np.int64)
    o = {k: np.concatenate(v) if v else empty for k, v in orders.items()}
    it = {k: np.concatenate(v) if v else empty for k, v in items.items()}
    o["coupon"] = o["coupon"].astype(bool)
    it["bad"] = it["bad"].astype(bool)
    n_o, n_i = len(o["cust"]), len(it["order"])
    order_ids = ids.order + np.arange(n_o, dtype=np.int64)
    ids.order += n_o
    customer_ids = first_id + 1 + np.arange(n, dtype=np.int64)

    line_total = it["qty"] * it["price"]
    subtotal = np.bincount(it["order"], weights=line_total, minlength=n_o)
    shipping = np.where(subtotal >= 50.0, 0.0, 4.99)
    i_at = o["at"][it["order"]]
    i_cust = o["cust"][it["order"]]

    # returns: bad experiences mostly come back; ones not back by `end` have not happened yet
    returned = rng.random(n_i) < np.where(it["bad"], P_RETURN_BAD, P_RETURN_GOOD)
    returned_at = i_at + (2 * DAY + rng.exponential(6 * DAY, n_i)).astype(np.int64)
    returned &= returned_at <= end_s
    r = np.flatnonzero(returned)
    r = r[np.argsort(returned_at[r], kind="stable")]
    reason = np.where(it["bad"][r], rng.integers(0, len(_REASONS_BAD), len(r)),
                      len(_REASONS_BAD) + rng.integers(0, len(_REASONS_GOOD), len(r)))
    returns = pa.table({
        "return_id": pa.array(ids.ret + np.arange(len(r), dtype=np.int64)),
        "order_id": pa.array(order_ids[it["order"][r]]),
        "product_id": pa.array(it["product"][r] + 1),
        "customer_id": pa.array(customer_ids[i_cust[r]]),
        "returned_at": _timestamps(returned_at[r]),
        "reason": _strings(_REASONS_BAD + _REASONS_GOOD, reason),
        "refund_amount": pa.array(np.round(line_total[r], 2)),
    })
    ids.ret += len(r)

    n_returned = np.bincount(it["order"][r], minlength=n_o)
    n_lines = np.bincount(it["order"], minlength=n_o)
    status = np.where(n_returned == 0, 0, np.where(n_returned < n_lines, 1, 2))

    # reviews: disappointed buyers write more often, and low ratings
    reviewed = rng.random(n_i) < np.where(it["bad"], P_REVIEW_BAD, P_REVIEW_GOOD)
    reviewed_at = i_at + (3 * DAY + rng.exponential(10 * DAY, n_i)).astype(np.int64)
    reviewed &= reviewed_at <= end_s
    v = np.flatnonzero(reviewed)
    v = v[np.argsort(reviewed_at[v], kind="stable")]
    rating = np.where(it["bad"][v], _choice(rng, _REVIEW_P_BAD, len(v)), _choice(rng, _REVIEW_P_GOOD, len(v)))
    texts = [t for per_rating in _REVIEW_TEXTS for t in per_rating]
    text_idx = rating * len(_REVIEW_TEXTS[0]) + rng.integers(0, len(_REVIEW_TEXTS[0]), len(v))
    reviews = pa.table({
        "review_id": pa.array(ids.review + np.arange(len(v), dtype=np.int64)),
        "customer_id": pa.array(customer_ids[i_cust[v]]),
        "product_id": pa.array(it["product"][v] + 1),
        "reviewed_at": _timestamps(reviewed_at[v]),
        "rating": pa.array(rating + 1),
        "text": _strings(texts, text_idx),
        "helpful_votes": pa.array(rng.poisson(0.6, len(v)).astype(np.int64)),
    })
    ids.review += len(v)

    return {
        "customers": pa.table({
            "customer_id": pa.array(customer_ids),
            "signup_at": _timestamps(signup),
            "country": _strings(_COUNTRIES, country),
            "age": pa.array(age),
            "segment": _strings(_SEGMENTS, segment),
            "acquisition_channel": _strings(_ACQUISITION, acquisition),
            "marketing_opt_in": pa.array(opt_in),
        }),
        "orders": pa.table({
            "order_id": pa.array(order_ids),
            "customer_id": pa.array(customer_ids[o["cust"]]),
            "ordered_at": _timestamps(o["at"]),
            "channel": _strings(_CHANNELS, o["channel"]),
            "payment_method": _strings(_PAYMENTS, o["payment"]),
            "coupon_used": pa.array(o["coupon"]),
            "shipping_cost": pa.array(shipping),
            "total_amount": pa.array(np.round(subtotal + shipping, 2)),
            "status": _strings(_STATUSES, status),
        }),
        "order_items": pa.table({
            "order_id": pa.array(order_ids[it["order"]]),
            "product_id": pa.array(it["product"] + 1),
            "ordered_at": _timestamps(i_at),
            "quantity": pa.array(it["qty"].astype(np.int64)),
            "unit_price": pa.array(it["price"].astype(np.float64)),
        }),
        "returns": returns,
        "reviews": reviews,
    }
