"""The env names each ecosystem adapter registers, written out so that importing stepgym stays cheap.

Registering ids must not import the ecosystems (TextArena alone takes ~2 s and may be missing), so the
names are listed here; ``tests/test_adapters.py`` compares each list with the installed package
and fails with the difference when an upgrade adds or removes one.
"""

from __future__ import annotations

__all__ = ["REASONING_GYM_DATASETS", "SCIENCEWORLD_TASKS", "TEXTARENA_GAMES", "TEXTARENA_NLTK_GAMES", "TEXTWORLD_GAMES"]

TEXTARENA_GAMES: tuple[str, ...] = (
    # textarena 0.7.4: every registered id (without its -raw/-train wrapper variants) whose env plays with
    # one player (a ``SinglePlayerState``) and needs neither an API key nor downloaded data
    "2048-v0", "2048-v0-10x10", "2048-v0-3x3", "2048-v0-5x5", "2048-v0-6x6", "2048-v0-8x8", "2048-v0-easy",
    "2048-v0-extreme", "2048-v0-hard", "2048-v0-mega-easy", "2048-v0-super-easy", "2048-v0-ultra-easy",
    "2048-v0-very-easy", "2048-v0-very-hard", "Bandit-v0", "Bandit-v0-hard", "Blackjack-v0", "Blackjack-v0-long",
    "Countdown-v0", "Crosswords-v0", "Crosswords-v0-hardcore", "Cryptarithm-v0", "FifteenPuzzle-v0",
    "FrozenLake-v0", "FrozenLake-v0-hardcore", "FrozenLake-v0-random", "GuessTheNumber-v0",
    "GuessTheNumber-v0-hardcore", "LightsOut-v0", "LogicPuzzle-v0", "LogicPuzzle-v0-hard", "Mastermind-v0",
    "Mastermind-v0-extreme", "Mastermind-v0-hard", "Minesweeper-v0", "Minesweeper-v0-hard", "Minesweeper-v0-medium",
    "Minesweeper-v0-small", "PegJump-v0", "RushHour-v0", "Secretary-v0", "Secretary-v0-long", "Set-v0",
    "Slitherlink-v0", "Sokoban-v0", "Sokoban-v0-medium", "Sudoku-v0", "Sudoku-v0-easy", "Sudoku-v0-hard",
    "Sudoku-v0-medium", "Sudoku-v0-very-easy", "ThreeCardMonte-v0", "TowerOfHanoi-v0", "TowerOfHanoi-v0-extreme",
    "TowerOfHanoi-v0-hard", "TowerOfHanoi-v0-hardcore", "TowerOfHanoi-v0-medium",
)  # fmt: skip
"""TextArena's single-player games that run offline (57)."""

TEXTARENA_NLTK_GAMES: tuple[str, ...] = (
    # single-player word games that read NLTK corpora (``words``, ``averaged_perceptron_tagger_eng``), which
    # NLTK downloads on first use; registered too, and ``gym.make`` says how to install the corpora when missing
    "Hangman-v0", "Hangman-v0-hardcore", "WordLadder-v0", "WordLadder-v0-hard", "WordLadder-v0-medium",
    "WordSearch-v0", "WordSearch-v0-hardcore", "Wordle-v0", "Wordle-v0-hardcore", "Wordle-v0-long",
    "Wordle-v0-long-hardcore",
)  # fmt: skip
"""TextArena's single-player games that need NLTK data (11)."""

REASONING_GYM_DATASETS: tuple[str, ...] = (
    # reasoning-gym 0.1.25: ``reasoning_gym.factory.DATASETS`` without ``composite`` (a mixture of the others,
    # configured by a list of datasets rather than being a task of its own)
    "ab", "acre", "advanced_geometry", "aiw", "arc_1d", "arc_agi", "base_conversion", "basic_arithmetic", "bf",
    "binary_alternation", "binary_matrix", "bitwise_arithmetic", "boxnet", "caesar_cipher", "calendar_arithmetic",
    "chain_sum", "circuit_logic", "codeio", "coin_flip", "color_cube_rotation", "complex_arithmetic", "count_bits",
    "count_primes", "countdown", "course_schedule", "cryptarithm", "decimal_arithmetic", "decimal_chain_sum", "dice",
    "emoji_mystery", "family_relationships", "figlet_font", "fraction_simplification", "futoshiki", "game_of_life",
    "game_of_life_halting", "gcd", "graph_color", "group_anagrams", "gsm_symbolic", "intermediate_integration",
    "isomorphic_strings", "jugs", "kakurasu", "knight_swap", "knights_knaves", "largest_island", "lcm",
    "leg_counting", "letter_counting", "letter_jumble", "list_functions", "mahjong_puzzle", "manipulate_matrix",
    "maze", "mini_sudoku", "modulo_grid", "n_queens", "needle_haystack", "number_filtering", "number_format",
    "number_sequence", "number_sorting", "palindrome_generation", "palindrome_partitioning", "path_star",
    "polynomial_equations", "polynomial_multiplication", "pool_matrix", "power_function", "prime_factorization",
    "products", "propositional_logic", "puzzle24", "quantum_lock", "ransom_note", "rearc", "rectangle_count",
    "rotate_matrix", "rotten_oranges", "rubiks_cube", "rush_hour", "self_reference", "sentence_reordering",
    "shortest_path", "simple_equations", "simple_geometry", "simple_integration", "sokoban", "spell_backward",
    "spiral_matrix", "string_insertion", "string_manipulation", "string_splitting", "string_synthesis", "sudoku",
    "survo", "syllogism", "time_intervals", "tower_of_hanoi", "tsumego", "word_ladder", "word_sequence_reversal",
    "word_sorting", "zebra_puzzles",
)  # fmt: skip
"""reasoning-gym's procedural datasets (105)."""

TEXTWORLD_GAMES: tuple[str, ...] = ("coin_collector", "cooking", "simple", "treasure_hunter")
"""TextWorld's game generators (``textworld.challenges.CHALLENGES`` without the ``tw-`` prefix)."""

SCIENCEWORLD_TASKS: tuple[str, ...] = (
    # scienceworld 1.2.3: ``ScienceWorldEnv.get_task_names()``
    "boil", "change-the-state-of-matter-of", "chemistry-mix", "chemistry-mix-paint-secondary-color",
    "chemistry-mix-paint-tertiary-color", "find-animal", "find-living-thing", "find-non-living-thing", "find-plant",
    "freeze", "grow-fruit", "grow-plant", "identify-life-stages-1", "identify-life-stages-2",
    "inclined-plane-determine-angle", "inclined-plane-friction-named-surfaces",
    "inclined-plane-friction-unnamed-surfaces", "lifespan-longest-lived", "lifespan-longest-lived-then-shortest-lived",
    "lifespan-shortest-lived", "measure-melting-point-known-substance", "measure-melting-point-unknown-substance",
    "melt", "mendelian-genetics-known-plant", "mendelian-genetics-unknown-plant", "power-component",
    "power-component-renewable-vs-nonrenewable-energy", "test-conductivity", "test-conductivity-of-unknown-substances",
    "use-thermometer",
)  # fmt: skip
"""ScienceWorld's 30 task types."""
