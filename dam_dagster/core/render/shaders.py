"""GLSL for thumbnails, used by pyrender in place of its PBR shaders (see gl.py).

pyrender's own `mesh.frag` (image-based PBR with shadow-map hooks) costs llvmpipe about four
times more per pixel than what a thumbnail needs. These shaders keep pyrender's vertex layout,
`#ifdef` names and uniform names, and light the model with a fixed studio rig in view space:

* a key light from the upper left, a softer fill from the right, a sky/ground hemisphere term
  and a faint specular highlight, so faces, edges and holes read at a glance;
* two-sided lighting (the normal is flipped towards the viewer), so open meshes and meshes with
  inconsistent winding look right;
* without per-vertex normals (STL, most meshes) the flat face normal is derived from screen-space
  derivatives of the position: faceted shading, as slicers show it, with no normal buffer at all;
* points and lines (no surface, derivative normal of zero length) are shaded by depth
  instead: nearer is brighter, so a point cloud reads as a volume, not a flat silhouette.
"""

VERTEX = """#version 330 core
layout(location = 0) in vec3 position;
#ifdef NORMAL_LOC
layout(location = NORMAL_LOC) in vec3 normal;
#endif
#ifdef TEXCOORD_0_LOC
layout(location = TEXCOORD_0_LOC) in vec2 texcoord_0;
#endif
#ifdef COLOR_0_LOC
layout(location = COLOR_0_LOC) in vec4 color_0;
#endif
layout(location = INST_M_LOC) in mat4 inst_m;

uniform mat4 M;
uniform mat4 V;
uniform mat4 P;

out vec3 frag_position;
#ifdef NORMAL_LOC
out vec3 frag_normal;
#endif
#ifdef TEXCOORD_0_LOC
out vec2 uv_0;
#endif
#ifdef COLOR_0_LOC
out vec4 color_multiplier;
#endif

void main()
{
    vec4 view_pos = V * (M * (inst_m * vec4(position, 1.0)));
    gl_Position = P * view_pos;
    frag_position = view_pos.xyz;
#ifdef NORMAL_LOC
    frag_normal = mat3(V) * (mat3(M) * (mat3(inst_m) * normal));
#endif
#ifdef TEXCOORD_0_LOC
    uv_0 = texcoord_0;
#endif
#ifdef COLOR_0_LOC
    color_multiplier = color_0;
#endif
}
"""

FRAGMENT = """#version 330 core
struct Material {
    vec3 emissive_factor;
#ifdef USE_METALLIC_MATERIAL
    vec4 base_color_factor;
    float metallic_factor;
    float roughness_factor;
#endif
#ifdef USE_GLOSSY_MATERIAL
    vec4 diffuse_factor;
    vec3 specular_factor;
    float glossiness_factor;
#endif
#ifdef HAS_BASE_COLOR_TEX
    sampler2D base_color_texture;
#endif
#ifdef HAS_DIFFUSE_TEX
    sampler2D diffuse_texture;
#endif
};
uniform Material material;

in vec3 frag_position;
#ifdef NORMAL_LOC
in vec3 frag_normal;
#endif
#ifdef TEXCOORD_0_LOC
in vec2 uv_0;
#endif
#ifdef COLOR_0_LOC
in vec4 color_multiplier;
#endif

out vec4 frag_color;

// Light directions in view space (x right, y up, z towards the viewer), towards the light.
const vec3 KEY = vec3(-0.42, 0.62, 0.66);
const vec3 FILL = vec3(0.80, 0.10, 0.59);

void main()
{
    vec4 base = vec4(1.0);
#ifdef USE_METALLIC_MATERIAL
    base = material.base_color_factor;
#endif
#ifdef USE_GLOSSY_MATERIAL
    base = material.diffuse_factor;
#endif
#ifdef HAS_BASE_COLOR_TEX
    base *= texture(material.base_color_texture, uv_0);
#endif
#ifdef HAS_DIFFUSE_TEX
    base *= texture(material.diffuse_texture, uv_0);
#endif
#ifdef COLOR_0_LOC
    base *= color_multiplier;
#endif

#ifdef NORMAL_LOC
    vec3 n = frag_normal;
#else
    vec3 n = cross(dFdx(frag_position), dFdy(frag_position));
#endif
    float len = length(n);
    vec3 rgb = base.rgb;
    if (len > 1e-20) {
        n /= len;
        vec3 to_eye = normalize(-frag_position);
        if (dot(n, to_eye) < 0.0) n = -n;
        float key = max(dot(n, KEY), 0.0);
        float fill = max(dot(n, FILL), 0.0);
        float sky = 0.5 + 0.5 * n.y;
        float spec = pow(max(dot(n, normalize(KEY + to_eye)), 0.0), 40.0);
        vec3 albedo = base.rgb * base.rgb;                 // sRGB -> linear (gamma 2)
        vec3 lit = albedo * (0.90 * key + 0.22 * fill + 0.16 * sky + 0.04) + vec3(0.10 * spec);
        rgb = sqrt(lit);                                   // linear -> sRGB (gamma 2)
    } else {
        // no surface to light: depth (0 near .. 1 far, fitted to the model by framing.py)
        rgb = base.rgb * (1.0 - 0.45 * gl_FragCoord.z);
    }
    frag_color = vec4(clamp(rgb + material.emissive_factor, 0.0, 1.0), base.a);
}
"""

SOURCES = {"mesh.vert": VERTEX, "mesh.frag": FRAGMENT}
